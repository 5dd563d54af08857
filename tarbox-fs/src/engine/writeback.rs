//! Write-behind: whole blocks leave a file's buffer for the block store while the program keeps
//! writing, and a flush commits what was stored in one transaction.
//!
//! When a file's buffer fills, the blocks written whole are handed to a background task that
//! hashes, compresses and (for a tenant with a block store) stores them; the program's next
//! writes fill the buffer again meanwhile. A handed-off block is *staged* once stored: its
//! mapping waits for the next flush, which commits every staged block and the rest of the buffer
//! in one transaction after one `sync` of the store. So a sequential writer pays for encoding
//! and storing in parallel with its own writes, and for one transaction and one disk flush per
//! `2 × write_buffer_bytes` (or per `fsync`) instead of per buffer.
//!
//! Memory per open file is bounded: the buffer (`write_buffer_bytes`), at most
//! [`MAX_BATCHES`] batches in flight of at most a buffer each, and at most [`STAGED_BUFFERS`]
//! buffers of staged blocks, whose contents are kept until committed (reads are served from
//! them, and a block stored again after a reap needs them): 5 × 16 MiB = 80 MiB with the
//! defaults. Nothing here is visible to other engines or durable until the flush commits, as
//! with writes still in the buffer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::buffer::BlockBuf;
use super::io::{FileState, covers_block};
use super::patched::{PartialWrites, Rewrite};
use super::{Volume, align4k, blocks};
use crate::backend::{BlockHash, BlockWrite, StoredBlock};
use crate::error::{BackendError, FsError, FsResult};
use crate::types::Ino;

/// Batches of one file being encoded and stored at once.
const MAX_BATCHES: usize = 2;
/// Staged blocks of one file, in buffers, before a flush commits them.
const STAGED_BUFFERS: u64 = 2;

/// A file's blocks on their way from the buffer to a transaction.
#[derive(Default)]
pub(super) struct Writeback {
    /// Batches being encoded and stored, oldest first.
    batches: VecDeque<Batch>,
    /// Stored blocks whose mappings the next flush commits, by index; `None` is a hole.
    staged: BTreeMap<u64, Staged>,
    staged_bytes: u64,
    /// The reap epoch read before the first staged or in-flight block was stored.
    epoch: Option<u64>,
    /// Blocks of a batch that failed (the store was down): back to the buffer at the next
    /// write or flush, so a later flush stores them.
    failed: BTreeMap<u64, Bytes>,
}

/// Blocks as encoded, by index (`None`: a hole).
type Encoded = Vec<(u64, Option<StoredBlock>)>;

struct Batch {
    /// What is being stored, for reads meanwhile.
    contents: BTreeMap<u64, Bytes>,
    task: JoinHandle<FsResult<Encoded>>,
}

#[derive(Clone)]
struct Staged {
    block: Option<StoredBlock>,
    content: Bytes,
}

impl Writeback {
    /// The newest content of block `idx` held here (whole blocks only).
    pub(super) fn content(&self, idx: u64) -> Option<Bytes> {
        for batch in self.batches.iter().rev() {
            if let Some(c) = batch.contents.get(&idx) {
                return Some(c.clone());
            }
        }
        if let Some(s) = self.staged.get(&idx) {
            return Some(s.content.clone());
        }
        self.failed.get(&idx).cloned()
    }

    /// Bytes of file data held here: being stored, stored awaiting the commit, or failed.
    pub(super) fn held_bytes(&self) -> u64 {
        let batches: usize = self
            .batches
            .iter()
            .flat_map(|b| b.contents.values())
            .map(Bytes::len)
            .sum();
        let failed: usize = self.failed.values().map(Bytes::len).sum();
        self.staged_bytes + batches as u64 + failed as u64
    }

    pub(super) fn holds(&self, idx: u64) -> bool {
        self.staged.contains_key(&idx)
            || self.failed.contains_key(&idx)
            || self.batches.iter().any(|b| b.contents.contains_key(&idx))
    }

    /// Move the oldest batch's blocks to `staged`, waiting for it.
    async fn finish_oldest(&mut self) -> FsResult<()> {
        let Some(batch) = self.batches.pop_front() else {
            return Ok(());
        };
        let outcome = match batch.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(BackendError::Other(Box::new(e)).into()),
        };
        let encoded = match outcome {
            Ok(encoded) => encoded,
            Err(e) => {
                // Nothing of this batch is lost: it goes back to the buffer.
                self.failed.extend(batch.contents);
                return Err(e);
            }
        };
        for (idx, block) in encoded {
            let content = batch.contents.get(&idx).cloned().unwrap_or_default();
            self.staged_bytes += content.len() as u64;
            if let Some(old) = self.staged.insert(idx, Staged { block, content }) {
                self.staged_bytes -= old.content.len() as u64;
            }
        }
        Ok(())
    }

    /// Wait for every batch.
    pub(super) async fn drain(&mut self) -> FsResult<()> {
        while !self.batches.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }
}

/// Put blocks of failed batches back into the buffer (where they were not written again).
/// They are whole blocks, so each is written over its whole length.
fn return_failed(st: &mut FileState) {
    for (idx, content) in std::mem::take(&mut st.wb.failed) {
        if let std::collections::btree_map::Entry::Vacant(slot) = st.dirty.entry(idx) {
            st.written.insert(idx, vec![(0, content.len())]);
            slot.insert(BlockBuf::whole(bytes::BytesMut::from(&content[..])));
        }
    }
}

impl Volume {
    /// The buffer of `ino` is full: hand its whole blocks to the background, and flush when too
    /// much is staged or nothing could be handed off (a buffer of partly written blocks).
    pub(super) async fn write_behind(&self, ino: Ino, st: &mut FileState) -> FsResult<()> {
        return_failed(st);
        let bs = self.block_size();
        let whole: Vec<u64> = st
            .dirty
            .keys()
            .copied()
            .filter(|idx| covers_block(st.written.get(idx), bs))
            .collect();
        if whole.is_empty() {
            return self.flush_file(ino, st).await;
        }
        let mut contents = BTreeMap::new();
        for idx in whole {
            if let Some(buf) = st.dirty.remove(&idx) {
                st.written.remove(&idx);
                contents.insert(idx, buf.into_block().freeze());
            }
        }
        let epoch = self.data_epoch();
        st.wb.epoch.get_or_insert(epoch);
        let compression = self.inner.tenant.compression;
        let store = self.block_store().cloned();
        let tenant = self.inner.tenant.id;
        let work: Vec<(u64, Bytes)> = contents.iter().map(|(i, c)| (*i, c.clone())).collect();
        let task = tokio::spawn(async move {
            let encoded = blocks::encode_all(work, compression).await;
            if let Some(store) = store {
                let put: Vec<StoredBlock> = encoded.iter().filter_map(|(_, b)| b.clone()).collect();
                store.put(tenant, put).await?;
            }
            Ok(encoded)
        });
        st.wb.batches.push_back(Batch { contents, task });
        while st.wb.batches.len() > MAX_BATCHES
            || st.wb.batches.front().is_some_and(|b| b.task.is_finished())
        {
            st.wb.finish_oldest().await?;
        }
        let limit = STAGED_BUFFERS * self.shared().config.write_buffer_bytes;
        if st.wb.staged_bytes >= limit {
            self.flush_file(ino, st).await?;
        }
        Ok(())
    }

    /// Commit a file's staged blocks, buffered blocks and size in one transaction.
    pub(super) async fn flush_file(&self, ino: Ino, st: &mut FileState) -> FsResult<()> {
        let flushed = self.flush_file_once(ino, st).await;
        st.report_held();
        flushed
    }

    async fn flush_file_once(&self, ino: Ino, st: &mut FileState) -> FsResult<()> {
        let drained = st.wb.drain().await;
        return_failed(st);
        drained?;
        if st.dirty.is_empty()
            && st.wb.staged.is_empty()
            && st.mtime.is_none()
            && st.charged == align4k(st.stored_size)
        {
            return Ok(());
        }
        let bs = self.block_size();
        let compression = self.inner.tenant.compression;
        let mtime = st.mtime;
        // Bytes reserved in the store for this file ahead of the flush (under a byte quota).
        let reserved = st.charged.saturating_sub(align4k(st.stored_size));
        // The reap epoch before anything this flush commits was stored (see `data.rs`).
        let epoch = st.wb.epoch.unwrap_or_else(|| self.data_epoch());
        // Staged blocks written again since are superseded by the buffer.
        let staged: BTreeMap<u64, Staged> = st
            .wb
            .staged
            .iter()
            .filter(|(idx, _)| !st.dirty.contains_key(idx))
            .map(|(idx, s)| (*idx, s.clone()))
            .collect();
        // Blocks written whole are encoded and stored before the transaction, in parallel; the
        // others need the stored block to merge with, read inside it.
        let whole: Vec<(u64, Bytes)> = st
            .dirty
            .iter()
            .filter(|(idx, _)| covers_block(st.written.get(idx), bs))
            .map(|(&idx, buf)| (idx, Bytes::copy_from_slice(buf.block())))
            .collect();
        let encoded: HashMap<u64, Option<StoredBlock>> = blocks::encode_all(whole, compression)
            .await
            .into_iter()
            .collect();
        let prestored: Vec<StoredBlock> = encoded.values().flatten().cloned().collect();
        if let Some(store) = self.block_store() {
            store.put(self.inner.tenant.id, prestored.clone()).await?;
            if !prestored.is_empty() || !staged.is_empty() {
                store.sync().await?;
            }
        }
        let prestored: HashSet<BlockHash> = prestored
            .iter()
            .map(|b| b.hash)
            .chain(
                staged
                    .values()
                    .filter_map(|s| s.block.as_ref().map(|b| b.hash)),
            )
            .collect();
        let (encoded, prestored, staged_ref) = (&encoded, &prestored, &staged);
        let state = &*st;
        let (size, writes, contents, assembled) = self
            .retrying(|| async move {
                let mut txn = self.begin(&[ino]).await?;
                let mut inode = Volume::inode_in(txn.as_mut(), ino).await?;
                // Another engine may have resized the file since this one looked at it. A flush
                // never shrinks it (truncation is applied at once, never buffered); it only
                // extends it to the end of the writes it carries.
                let size = inode.size.max(state.write_end);
                // Blocks written only in part here: their other bytes are taken from the block as
                // stored now, not as this volume last saw it, so concurrent writers of other
                // engines to other parts of the block keep their data.
                let partial: Vec<u64> = state
                    .dirty
                    .keys()
                    .copied()
                    .filter(|idx| !covers_block(state.written.get(idx), bs))
                    .collect();
                let partial_writes = PartialWrites {
                    dirty: &state.dirty,
                    written: &state.written,
                    indexes: &partial,
                    size,
                };
                let mut over = self.write_over(txn.as_mut(), ino, &partial_writes).await?;
                let mut writes = Vec::with_capacity(state.dirty.len() + staged_ref.len());
                let mut new_blocks: Vec<StoredBlock> = Vec::new();
                let mut named: HashSet<BlockHash> = HashSet::new();
                let mut contents: Vec<(BlockHash, Bytes)> = Vec::new();
                // Contents of patched blocks: for the memory cache only (the disk cache names
                // what it holds by the hash of its content).
                let mut assembled: Vec<(BlockHash, Bytes)> = Vec::new();
                // `content` is produced only for a block not seen yet in this flush; `None`
                // for a patched block (see `assembled`). `pieces`: the patch blocks a patched
                // block names, with their contents.
                let mut add = |index: u64,
                               stored: Option<StoredBlock>,
                               pieces: Vec<(StoredBlock, Bytes)>,
                               content: &dyn Fn() -> Option<Bytes>| {
                    for (piece, content) in pieces {
                        if named.insert(piece.hash) {
                            contents.push((piece.hash, content));
                            new_blocks.push(piece);
                        }
                    }
                    writes.push(BlockWrite {
                        index,
                        block: stored.as_ref().map(|b| b.hash),
                    });
                    if let Some(b) = stored {
                        if named.insert(b.hash) {
                            if let Some(content) = content() {
                                let trimmed =
                                    content.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
                                contents.push((b.hash, content.slice(..trimmed)));
                            }
                            new_blocks.push(b);
                        }
                    }
                };
                for (&idx, s) in staged_ref {
                    if idx * bs < size {
                        add(idx, s.block.clone(), Vec::new(), &|| {
                            Some(s.content.clone())
                        });
                    }
                }
                for (&idx, buf) in &state.dirty {
                    let start = idx * bs;
                    if start >= size {
                        continue;
                    }
                    match over.remove(&idx) {
                        Some(Rewrite::Plain(stored, content)) => {
                            add(idx, stored, Vec::new(), &|| Some(content.clone()));
                        }
                        Some(Rewrite::Patched {
                            row,
                            pieces,
                            content,
                        }) => {
                            if let Some(content) = content {
                                assembled.push((row.hash, content));
                            }
                            add(idx, Some(row), pieces, &|| None);
                        }
                        None => {
                            let len = (size - start).min(bs) as usize;
                            let content = &buf.block()[..len];
                            let stored = match encoded.get(&idx) {
                                Some(stored) if content.len() == bs as usize => stored.clone(),
                                _ => blocks::encode(content, compression),
                            };
                            add(idx, stored, Vec::new(), &|| {
                                Some(Bytes::copy_from_slice(content))
                            });
                        }
                    }
                }
                // The store charged this file for its stored size plus this volume's
                // reservation; afterwards it must be charged for exactly the new size.
                let delta = align4k(size) as i64 - align4k(inode.size) as i64 - reserved as i64;
                if let Err(kind) = txn.charge(delta, 0).await? {
                    return Err(FsError::QuotaExceeded(kind));
                }
                let extra: Vec<StoredBlock> = new_blocks
                    .iter()
                    .filter(|b| !prestored.contains(&b.hash))
                    .cloned()
                    .collect();
                self.store_blocks(&extra).await?;
                self.map_blocks(txn.as_mut(), ino, &writes, &new_blocks, epoch)
                    .await?;
                inode.size = size;
                if let Some(t) = mtime {
                    inode.mtime = t;
                    inode.ctime = t;
                }
                txn.put_inode(&inode).await?;
                self.commit(txn).await?;
                self.shared().written.add(&new_blocks);
                Ok((size, writes, contents, assembled))
            })
            .await?;
        for w in &writes {
            st.map.insert(w.index, w.block);
        }
        let tenant = self.inner.tenant.id;
        for (hash, content) in contents.iter().chain(&assembled) {
            self.shared().cache.insert(tenant, *hash, content.clone());
        }
        // What was just written is often read next (a dataset written then trained on, a
        // random-access file): keep it on disk too, as far as the disk keeps up.
        if let Some(disk) = &self.shared().disk_cache {
            disk.fill(tenant, contents);
        }
        st.dirty.clear();
        st.written.clear();
        st.wb = Writeback::default();
        st.write_end = 0;
        st.mtime = None;
        st.size = size;
        st.stored_size = size;
        st.charged = align4k(size);
        Ok(())
    }
}
