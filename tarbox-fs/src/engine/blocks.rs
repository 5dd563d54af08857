//! Block encoding and the decoded-block cache.
//!
//! A file is a sequence of fixed-size blocks. A block is stored without its trailing zeros (reads
//! pad with zeros up to the block size or the file size), so an all-zero block needs no storage
//! at all and becomes a hole. Stored blocks are named by the BLAKE3 hash of that trimmed content,
//! which makes equal blocks of one tenant share storage, and are zstd-compressed when that saves
//! space. Decoded blocks are immutable, so the cache never needs invalidation.

use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use super::patched::Patched;

use crate::backend::{BlockHash, Compression, StoredBlock};
use crate::error::{BackendError, FsResult};
use crate::types::TenantId;

/// zstd level: fast enough not to dominate a 1 MiB write, still 2-4x on text.
const ZSTD_LEVEL: i32 = 1;

/// The content to store for a block, or `None` for a hole.
pub(crate) fn encode(content: &[u8], compression: Compression) -> Option<StoredBlock> {
    let len = content.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if len == 0 {
        return None;
    }
    let content = &content[..len];
    let hash = BlockHash(*blake3::hash(content).as_bytes());
    if compression == Compression::Zstd && worth_compressing(content) {
        if let Ok(packed) = compress(content) {
            // Keep compression only where it saves at least an eighth.
            if packed.len() < content.len() - content.len() / 8 {
                return Some(StoredBlock {
                    hash,
                    compressed: true,
                    data: Bytes::from(packed),
                    parts: Vec::new(),
                });
            }
        }
    }
    Some(StoredBlock {
        hash,
        compressed: false,
        data: Bytes::copy_from_slice(content),
        parts: Vec::new(),
    })
}

/// Whether compressing `content` is likely to pay: a sample from its middle must shrink by an
/// eighth. Model weights, archives and media do not compress; trying costs as much as storing
/// them.
fn worth_compressing(content: &[u8]) -> bool {
    const SAMPLE: usize = 8 << 10;
    if content.len() <= 4 * SAMPLE {
        return true;
    }
    let mid = content.len() / 2;
    let sample = &content[mid - SAMPLE / 2..mid + SAMPLE / 2];
    compress(sample).is_ok_and(|p| p.len() < SAMPLE - SAMPLE / 8)
}

/// zstd at [`ZSTD_LEVEL`] with a compressor kept per thread: creating a context per block costs
/// as much as compressing a small one.
fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        match slot.as_mut() {
            Some(c) => c.compress(data),
            None => zstd::bulk::compress(data, ZSTD_LEVEL),
        }
    })
}

/// Encode whole blocks `(index, content)` in parallel, off the async threads: hashing and
/// compressing a write buffer's worth of blocks is the CPU-heavy part of a flush, and needs no
/// transaction.
pub(crate) async fn encode_all(
    blocks: Vec<(u64, Bytes)>,
    compression: Compression,
) -> Vec<(u64, Option<StoredBlock>)> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = blocks.len().div_ceil(workers).max(1);
    let mut chunks = Vec::new();
    let mut rest = blocks;
    while !rest.is_empty() {
        let tail = rest.split_off(per.min(rest.len()));
        chunks.push(std::mem::replace(&mut rest, tail));
    }
    let encode_chunk = move |chunk: Vec<(u64, Bytes)>| -> Vec<(u64, Option<StoredBlock>)> {
        chunk
            .into_iter()
            .map(|(idx, content)| (idx, encode(&content, compression)))
            .collect()
    };
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| tokio::task::spawn_blocking(move || encode_chunk(chunk)))
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        match task.await {
            Ok(done) => out.extend(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: nothing will store these blocks anyway.
            Err(_) => {}
        }
    }
    out
}

/// The trimmed content of a stored block, verified against its hash.
pub(crate) fn decode(block: &StoredBlock, block_size: u64) -> FsResult<Bytes> {
    let content = if block.compressed {
        let plain = zstd::bulk::decompress(&block.data, block_size as usize).map_err(|e| {
            BackendError::Corrupt(format!("block {:?} does not decompress: {e}", block.hash))
        })?;
        Bytes::from(plain)
    } else {
        block.data.clone()
    };
    if blake3::hash(&content).as_bytes() != &block.hash.0 {
        return Err(BackendError::Corrupt(format!(
            "block {:?} does not match its hash",
            block.hash
        ))
        .into());
    }
    Ok(content)
}

/// Decoded blocks by tenant and hash, bounded by total bytes; and what is known of blocks'
/// kinds: a patched block's manifest, or that a block is plain (what a flush writing over a
/// block needs, without reading it).
#[derive(Clone)]
pub(crate) struct BlockCache {
    cache: Cache<(TenantId, BlockHash), Bytes>,
    kinds: Cache<(TenantId, BlockHash), Option<Arc<Patched>>>,
}

/// Block kinds remembered (a manifest of 16 patches is under 1 KiB).
const KINDS: u64 = 64 << 10;

impl BlockCache {
    pub(crate) fn new(capacity_bytes: u64) -> BlockCache {
        // Least recently used goes first. moka's default admission by frequency turns away a
        // block read or written once when the cache is full of blocks read twice, long ago:
        // measured, a 256 MiB file just written was then read at 1,100 random reads a second
        // from the database instead of 45,000 from memory, after an earlier 1 GiB file had
        // been read twice.
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_, v: &Bytes| u32::try_from(v.len() + 64).unwrap_or(u32::MAX))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        BlockCache {
            cache,
            kinds: Cache::new(KINDS),
        }
    }

    /// What is known of block `hash`: `Some(None)` plain, `Some(Some(_))` patched.
    pub(crate) fn kind(&self, tenant: TenantId, hash: &BlockHash) -> Option<Option<Arc<Patched>>> {
        self.kinds.get(&(tenant, *hash))
    }

    pub(crate) fn note_kind(&self, tenant: TenantId, hash: BlockHash, kind: Option<Arc<Patched>>) {
        self.kinds.insert((tenant, hash), kind);
    }

    pub(crate) fn get(&self, tenant: TenantId, hash: &BlockHash) -> Option<Bytes> {
        self.cache.get(&(tenant, *hash))
    }

    pub(crate) fn insert(&self, tenant: TenantId, hash: BlockHash, content: Bytes) {
        self.cache.insert((tenant, hash), content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_trims_zeros() {
        let mut block = vec![0u8; 65536];
        block[..5].copy_from_slice(b"hello");
        for compression in [Compression::None, Compression::Zstd] {
            let stored = encode(&block, compression).expect("not a hole");
            let content = decode(&stored, 65536).expect("decodes");
            assert_eq!(&content[..], b"hello");
        }
        assert!(encode(&[0u8; 4096], Compression::Zstd).is_none());
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let stored = encode(&noise, Compression::Zstd).expect("not a hole");
        assert_eq!(&decode(&stored, 4096).expect("decodes")[..], &noise[..]);
    }

    #[test]
    fn incompressible_blocks_are_stored_as_they_are() {
        let mut noise = vec![0u8; 256 << 10];
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let stored = encode(&noise, Compression::Zstd).expect("not a hole");
        assert!(!stored.compressed);
        let text = b"checkpoint step 1000 loss 0.25\n".repeat(8000);
        assert!(
            encode(&text, Compression::Zstd)
                .expect("not a hole")
                .compressed
        );
    }

    #[test]
    fn corrupt_blocks_are_reported() {
        let mut stored = encode(b"some data", Compression::None).expect("not a hole");
        stored.data = Bytes::from_static(b"other data");
        assert!(decode(&stored, 4096).is_err());
    }
}
