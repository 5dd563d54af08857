//! Patched blocks: a block written in part is stored as what was written, not rewritten whole.
//!
//! Rewriting a 256 KiB block for a 4 KiB write costs 64 times the bytes the program wrote, and
//! first needs the block itself. A flush instead stores each range written into a stored block
//! as a small block of its own (a *patch*) and maps the index to a *patched block*: a manifest
//! naming the block written over (the *base*) and the patches, applied in order. The manifest is
//! a block row like any other (content-addressed, reference-counted, kept in the database even
//! for tenants whose blocks live in a block store) that holds one reference to each block it
//! names, released when the manifest's own last reference goes. So checkpoints, clones, drops
//! and diffs keep working on block hashes, and a 4 KiB write costs about 4 KiB of I/O.
//!
//! A block written again gets a new manifest: its base and the older patches plus the new ones
//! (a patch wholly covered by a later one is left out). Past [`MAX_PATCHES`] patches or
//! [`MAX_PATCHED_SHARE`] of the block in patches, the flush merges it into a plain block again;
//! reading a patched block costs its base and each patch, so this bounds what a read pays.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::buffer::BlockBuf;
use super::io::overlay;
use super::{Volume, blocks};
use crate::backend::{BlockHash, StoreTxn, StoredBlock};
use crate::error::{BackendError, FsResult};
use crate::types::Ino;

/// Patches a manifest may hold before the block is merged into a plain one.
pub(crate) const MAX_PATCHES: usize = 16;
/// The share of a block that patches may cover before it is merged (as a divisor of its size).
pub(crate) const MAX_PATCHED_SHARE: u64 = 2;

const MAGIC: &[u8; 4] = b"TBP1";
/// BLAKE3 key-derivation context: manifests are named apart from plain blocks, so no content a
/// program writes can be taken for a manifest.
const NAMING: &str = "tarbox 2026-12 patched block manifest";
const HASH_LEN: usize = 32;
/// offset u32, length u32, a flag byte (1: stored, 0: zeros) and the hash.
const PATCH_LEN: usize = 4 + 4 + 1 + HASH_LEN;

/// One range written over a patched block's base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Patch {
    pub(crate) offset: u32,
    pub(crate) len: u32,
    /// The range's bytes as a plain block (trimmed); `None`: the range is zeros.
    pub(crate) block: Option<BlockHash>,
}

impl Patch {
    fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// A block stored as its base and the patches written over it since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patched {
    /// The block written over; `None`: a hole.
    pub(crate) base: Option<BlockHash>,
    pub(crate) patches: Vec<Patch>,
}

impl Patched {
    /// Add `newer` patches over these, leaving out older ones a newer patch wholly covers.
    pub(crate) fn patch(&self, newer: &[Patch]) -> Patched {
        let mut patches: Vec<Patch> = Vec::with_capacity(self.patches.len() + newer.len());
        for p in self.patches.iter().chain(newer) {
            patches.retain(|old| !(p.offset <= old.offset && old.end() <= p.end()));
            patches.push(*p);
        }
        Patched {
            base: self.base,
            patches,
        }
    }

    /// Whether a read of this block would pay too much: merge it instead.
    pub(crate) fn too_patched(&self, block_size: u64) -> bool {
        let covered: u64 = self.patches.iter().map(|p| u64::from(p.len)).sum();
        self.patches.len() > MAX_PATCHES || covered > block_size / MAX_PATCHED_SHARE
    }

    /// The blocks this one names: its base and its stored patches, each as often as named.
    pub(crate) fn parts(&self) -> Vec<BlockHash> {
        self.base
            .into_iter()
            .chain(self.patches.iter().filter_map(|p| p.block))
            .collect()
    }

    /// The manifest as a block row.
    pub(crate) fn encode(&self) -> StoredBlock {
        let mut out = Vec::with_capacity(4 + 1 + HASH_LEN + 4 + self.patches.len() * PATCH_LEN);
        out.extend_from_slice(MAGIC);
        put_hash(&mut out, self.base);
        out.extend_from_slice(&(self.patches.len() as u32).to_le_bytes());
        for p in &self.patches {
            out.extend_from_slice(&p.offset.to_le_bytes());
            out.extend_from_slice(&p.len.to_le_bytes());
            put_hash(&mut out, p.block);
        }
        StoredBlock {
            hash: BlockHash(blake3::derive_key(NAMING, &out)),
            compressed: false,
            data: Bytes::from(out),
            parts: self.parts(),
        }
    }

    /// The manifest of a patched block row, checked against its name.
    pub(crate) fn decode(block: &StoredBlock) -> FsResult<Patched> {
        let corrupt =
            |why: &str| BackendError::Corrupt(format!("patched block {:?}: {why}", block.hash));
        let data = &block.data[..];
        if BlockHash(blake3::derive_key(NAMING, data)) != block.hash {
            return Err(corrupt("does not match its hash").into());
        }
        let mut rest = data
            .strip_prefix(MAGIC)
            .ok_or_else(|| corrupt("no manifest"))?;
        let base = take_hash(&mut rest).ok_or_else(|| corrupt("truncated"))?;
        let count = take_u32(&mut rest).ok_or_else(|| corrupt("truncated"))?;
        let mut patches = Vec::with_capacity((count as usize).min(MAX_PATCHES * 2));
        for _ in 0..count {
            let offset = take_u32(&mut rest).ok_or_else(|| corrupt("truncated"))?;
            let len = take_u32(&mut rest).ok_or_else(|| corrupt("truncated"))?;
            let block = take_hash(&mut rest).ok_or_else(|| corrupt("truncated"))?;
            patches.push(Patch { offset, len, block });
        }
        if !rest.is_empty() {
            return Err(corrupt("trailing bytes").into());
        }
        Ok(Patched { base, patches })
    }

    /// The block's content (trimmed of trailing zeros), from the contents of its parts
    /// (trimmed, as decoded), within `block_size`.
    pub(crate) fn assemble(
        &self,
        parts: &HashMap<BlockHash, Bytes>,
        block_size: u64,
    ) -> FsResult<Bytes> {
        let part = |hash: &BlockHash| {
            parts.get(hash).ok_or_else(|| {
                BackendError::Corrupt(format!("patched block names missing block {hash:?}"))
            })
        };
        let base = match &self.base {
            Some(h) => part(h)?.clone(),
            None => Bytes::new(),
        };
        let len = self
            .patches
            .iter()
            .map(Patch::end)
            .fold(base.len() as u64, u64::max)
            .min(block_size) as usize;
        let mut out = BytesMut::zeroed(len);
        out[..base.len().min(len)].copy_from_slice(&base[..base.len().min(len)]);
        for p in &self.patches {
            let from = (p.offset as usize).min(len);
            let to = (p.end() as usize).min(len);
            let range = &mut out[from..to];
            range.fill(0);
            if let Some(h) = &p.block {
                let content = part(h)?;
                let n = content.len().min(range.len());
                range[..n].copy_from_slice(&content[..n]);
            }
        }
        let trimmed = out.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        out.truncate(trimmed);
        Ok(out.freeze())
    }
}

/// What a flush stores for a block written in part.
pub(super) enum Rewrite {
    /// A plain block (`None`: a hole) and its content, for the caches.
    Plain(Option<StoredBlock>, Bytes),
    /// A patched block, the patch blocks it adds (with their contents), and its content when
    /// the block written over was in the cache (kept in memory for the next read or merge).
    Patched {
        row: StoredBlock,
        pieces: Vec<(StoredBlock, Bytes)>,
        content: Option<Bytes>,
    },
}

/// Blocks written in part by a flush: their buffers and the ranges written (sorted, disjoint).
pub(super) struct PartialWrites<'a> {
    pub(super) dirty: &'a BTreeMap<u64, BlockBuf>,
    pub(super) written: &'a BTreeMap<u64, Vec<(usize, usize)>>,
    /// Indexes of the blocks written in part, sorted.
    pub(super) indexes: &'a [u64],
    /// The file's size after the flush: nothing past it is stored.
    pub(super) size: u64,
}

impl Volume {
    /// What to store for blocks written in part, in `txn` (which holds the inode's lock): over a
    /// hole, the written ranges as a plain block; over a stored block, a patched block adding
    /// the ranges as patches, or, when that would be too patched, the stored block merged with
    /// them as a plain block (the only case that reads it).
    pub(super) async fn write_over(
        &self,
        txn: &mut dyn StoreTxn,
        ino: Ino,
        w: &PartialWrites<'_>,
    ) -> FsResult<HashMap<u64, Rewrite>> {
        let (Some(&lo), Some(&hi)) = (w.indexes.first(), w.indexes.last()) else {
            return Ok(HashMap::new());
        };
        let bs = self.block_size();
        let compression = self.inner.tenant.compression;
        let tenant = self.inner.tenant.id;
        let cache = &self.shared().cache;
        let mapped: HashMap<u64, BlockHash> = txn
            .block_map(ino, lo..hi + 1)
            .await?
            .into_iter()
            .filter(|(idx, _)| w.indexes.binary_search(idx).is_ok())
            .collect();
        // Which mapped blocks are patched, from the cache or their rows.
        let mut kinds: HashMap<BlockHash, Option<Arc<Patched>>> = HashMap::new();
        let mut unknown: Vec<BlockHash> = Vec::new();
        for h in mapped.values() {
            match cache.kind(tenant, h) {
                Some(kind) => {
                    kinds.insert(*h, kind);
                }
                None => unknown.push(*h),
            }
        }
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            for row in txn.patched_blocks(&unknown).await? {
                let manifest = Arc::new(Patched::decode(&row)?);
                cache.note_kind(tenant, row.hash, Some(manifest.clone()));
                kinds.insert(row.hash, Some(manifest));
            }
            for h in unknown {
                kinds.entry(h).or_insert_with(|| {
                    cache.note_kind(tenant, h, None);
                    None
                });
            }
        }
        let no_ranges = Vec::new();
        let empty = BlockBuf::default();
        let part = |idx: u64| {
            let len = (w.size - idx * bs).min(bs) as usize;
            let buf = w.dirty.get(&idx).unwrap_or(&empty);
            (buf, w.written.get(&idx).unwrap_or(&no_ranges), len)
        };
        let plain = |content: Vec<u8>| {
            let content = Bytes::from(content);
            let stored = blocks::encode(&content, compression);
            if let Some(b) = &stored {
                cache.note_kind(tenant, b.hash, None);
            }
            Rewrite::Plain(stored, content)
        };
        let mut out = HashMap::new();
        let mut merge: Vec<(u64, BlockHash)> = Vec::new();
        for &idx in w.indexes {
            if idx * bs >= w.size {
                continue;
            }
            let (buf, ranges, len) = part(idx);
            let Some(hash) = mapped.get(&idx) else {
                out.insert(idx, plain(overlay(&[], buf, ranges, len)));
                continue;
            };
            let current = match kinds.get(hash) {
                Some(Some(manifest)) => (**manifest).clone(),
                _ => Patched {
                    base: Some(*hash),
                    patches: Vec::new(),
                },
            };
            let mut pieces = Vec::new();
            let mut patches = Vec::new();
            for &(a, b) in ranges {
                let b = b.min(len);
                if a >= b {
                    continue;
                }
                let bytes = buf.get(a, b);
                let piece = blocks::encode(bytes, compression);
                patches.push(Patch {
                    offset: a as u32,
                    len: (b - a) as u32,
                    block: piece.as_ref().map(|p| p.hash),
                });
                if let Some(piece) = piece {
                    let trimmed = piece_len(bytes);
                    pieces.push((piece, Bytes::copy_from_slice(&bytes[..trimmed])));
                }
            }
            let next = current.patch(&patches);
            if next.too_patched(bs) {
                merge.push((idx, *hash));
                continue;
            }
            let row = next.encode();
            cache.note_kind(tenant, row.hash, Some(Arc::new(next)));
            // Cheap when the block written over is in memory: a later read or merge of this
            // one then needs no round trip.
            let content = cache.get(tenant, hash).map(|current| {
                let mut content = overlay(&current, buf, ranges, len);
                content.truncate(piece_len(&content));
                Bytes::from(content)
            });
            out.insert(
                idx,
                Rewrite::Patched {
                    row,
                    pieces,
                    content,
                },
            );
        }
        if !merge.is_empty() {
            let stored = self.fetch_blocks(txn, &merge).await?;
            for (idx, _) in merge {
                let (buf, ranges, len) = part(idx);
                let base = stored.get(&idx).map_or(&[][..], |b| &b[..]);
                out.insert(idx, plain(overlay(base, buf, ranges, len)));
            }
        }
        Ok(out)
    }
}

/// The length of `content` without its trailing zeros (how blocks are stored and cached).
fn piece_len(content: &[u8]) -> usize {
    content.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn put_hash(out: &mut Vec<u8>, hash: Option<BlockHash>) {
    match hash {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h.0);
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0; HASH_LEN]);
        }
    }
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_le_bytes(*head))
}

fn take_hash(rest: &mut &[u8]) -> Option<Option<BlockHash>> {
    let (&flag, tail) = rest.split_first()?;
    let (hash, tail) = tail.split_first_chunk::<HASH_LEN>()?;
    *rest = tail;
    match flag {
        0 => Some(None),
        1 => Some(Some(BlockHash(*hash))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> BlockHash {
        BlockHash([b; 32])
    }

    #[test]
    fn manifests_round_trip_and_are_named_apart_from_content() {
        let patched = Patched {
            base: Some(h(1)),
            patches: vec![
                Patch {
                    offset: 4096,
                    len: 4096,
                    block: Some(h(2)),
                },
                Patch {
                    offset: 0,
                    len: 10,
                    block: None,
                },
            ],
        };
        let row = patched.encode();
        assert_eq!(Patched::decode(&row).expect("decodes"), patched);
        assert_eq!(row.parts, vec![h(1), h(2)]);
        assert_ne!(row.hash.0, *blake3::hash(&row.data).as_bytes());
        let mut bad = row.clone();
        bad.data = Bytes::from(row.data[..row.data.len() - 1].to_vec());
        assert!(Patched::decode(&bad).is_err());
    }

    #[test]
    fn later_patches_win_and_covered_ones_are_dropped() {
        let base = Patched {
            base: Some(h(1)),
            patches: vec![Patch {
                offset: 8,
                len: 4,
                block: Some(h(2)),
            }],
        };
        let over = base.patch(&[Patch {
            offset: 0,
            len: 16,
            block: Some(h(3)),
        }]);
        assert_eq!(over.patches.len(), 1);
        let mut parts = HashMap::new();
        parts.insert(h(1), Bytes::from_static(b"aaaaaaaaaaaaaaaaaaaaaaaa"));
        parts.insert(h(2), Bytes::from_static(b"bbbb"));
        parts.insert(h(3), Bytes::from_static(b"cc"));
        let content = base
            .patch(&[Patch {
                offset: 10,
                len: 20,
                block: Some(h(3)),
            }])
            .assemble(&parts, 64)
            .expect("assembles");
        // Base, then bytes 8..12 from h(2), then 10..30: "cc" and zeros (trimmed).
        assert_eq!(&content[..], b"aaaaaaaabbcc");
        let content = over.assemble(&parts, 64).expect("assembles");
        // Bytes 0..16 are "cc" and zeros, the base shows from 16 on.
        let mut want = b"cc".to_vec();
        want.extend([0u8; 14]);
        want.extend(b"aaaaaaaa");
        assert_eq!(&content[..], &want[..]);
    }
}
