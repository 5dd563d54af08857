//! Block encoding and the decoded-block cache.
//!
//! A file is a sequence of fixed-size blocks. A block is stored without its trailing zeros (reads
//! pad with zeros up to the block size or the file size), so an all-zero block needs no storage
//! at all and becomes a hole. Stored blocks are named by the BLAKE3 hash of that trimmed content,
//! which makes equal blocks of one tenant share storage, and are zstd-compressed when that saves
//! space. Decoded blocks are immutable, so the cache never needs invalidation.

use bytes::Bytes;
use moka::sync::Cache;

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
    if compression == Compression::Zstd {
        if let Ok(packed) = zstd::bulk::compress(content, ZSTD_LEVEL) {
            // Keep compression only where it saves at least an eighth.
            if packed.len() < content.len() - content.len() / 8 {
                return Some(StoredBlock {
                    hash,
                    compressed: true,
                    data: Bytes::from(packed),
                });
            }
        }
    }
    Some(StoredBlock {
        hash,
        compressed: false,
        data: Bytes::copy_from_slice(content),
    })
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

/// Decoded blocks by tenant and hash, bounded by total bytes.
#[derive(Clone)]
pub(crate) struct BlockCache {
    cache: Cache<(TenantId, BlockHash), Bytes>,
}

impl BlockCache {
    pub(crate) fn new(capacity_bytes: u64) -> BlockCache {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_, v: &Bytes| u32::try_from(v.len() + 64).unwrap_or(u32::MAX))
            .build();
        BlockCache { cache }
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
    fn corrupt_blocks_are_reported() {
        let mut stored = encode(b"some data", Compression::None).expect("not a hole");
        stored.data = Bytes::from_static(b"other data");
        assert!(decode(&stored, 4096).is_err());
    }
}
