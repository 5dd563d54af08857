//! Ranges of a file: truncate, `fallocate`, and the data/hole search of `lseek`.
//!
//! Size changes go through the open file's buffer when the file is open (so every handle sees
//! them at once) and are one transaction each, charged against the byte quota like writes.

use super::attr::{MAX_FILE_SIZE, kill_priv};
use super::{Volume, align4k, blocks, perm};
use crate::backend::{BlockWrite, StoredBlock};
use crate::error::{FsError, FsResult};
use crate::types::{Caller, FallocateMode, FileHandle, FileType, Ino, Whence};

impl Volume {
    /// Change the size of `ino` (truncate up or down). `writable_handle` is whether the caller
    /// holds a handle open for writing, which makes write permission unnecessary.
    pub(crate) async fn truncate(
        &self,
        caller: &Caller,
        ino: Ino,
        size: u64,
        writable_handle: bool,
    ) -> FsResult<()> {
        self.ensure_writable()?;
        let inode = self.reader().inode(ino).await?.ok_or(FsError::NotFound)?;
        match inode.kind {
            FileType::Regular => {}
            FileType::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("truncate of a special file")),
        }
        if !writable_handle {
            perm::check(caller, &inode, perm::W)?;
        }
        self.truncate_open(caller, ino, size, false).await
    }

    /// Truncate after permission checks, keeping an open file's buffer in step. `always_touch`
    /// updates mtime/ctime even when the size does not change (`O_TRUNC`).
    pub(super) async fn truncate_open(
        &self,
        caller: &Caller,
        ino: Ino,
        size: u64,
        always_touch: bool,
    ) -> FsResult<()> {
        let bs = self.block_size();
        match self.open_file(ino) {
            Some(file) => {
                let mut st = file.lock_state().await;
                self.flush_file(ino, &mut st).await?;
                self.truncate_stored(caller, ino, size, always_touch)
                    .await?;
                st.size = size;
                st.stored_size = size;
                st.charged = align4k(size);
                let keep = size.div_ceil(bs);
                st.map.retain(|idx, _| *idx < keep);
                if size % bs != 0 {
                    // The cut block was rewritten.
                    st.map.remove(&(size / bs));
                }
                Ok(())
            }
            None => self.truncate_stored(caller, ino, size, always_touch).await,
        }
    }

    async fn truncate_stored(
        &self,
        caller: &Caller,
        ino: Ino,
        size: u64,
        always_touch: bool,
    ) -> FsResult<()> {
        let bs = self.block_size();
        let compression = self.inner.tenant.compression;
        self.retrying(|| async {
            let mut txn = self.begin(&[ino]).await?;
            let mut inode = Volume::inode_in(txn.as_mut(), ino).await?;
            let old = inode.size;
            if size == old && !always_touch {
                return Ok(());
            }
            // The cut block stored anew, if any.
            let mut cut_block: Vec<StoredBlock> = Vec::new();
            if size < old {
                txn.truncate_blocks(ino, size.div_ceil(bs)).await?;
                if size % bs != 0 {
                    // Zero the cut block's tail so a later extension reads zeros.
                    let idx = size / bs;
                    let map = txn.block_map(ino, idx..idx + 1).await?;
                    if let Some((_, hash)) = map.first() {
                        let content = self.fetch_blocks(txn.as_mut(), &[(idx, *hash)]).await?;
                        let keep = (size % bs) as usize;
                        let old_block = content.get(&idx).cloned().unwrap_or_default();
                        let cut = &old_block[..keep.min(old_block.len())];
                        let stored = blocks::encode(cut, compression);
                        let write = BlockWrite {
                            index: idx,
                            block: stored.as_ref().map(|b| b.hash),
                        };
                        let new_blocks: Vec<StoredBlock> = stored.into_iter().collect();
                        let epoch = self.data_epoch();
                        self.store_blocks(&new_blocks).await?;
                        self.map_blocks(txn.as_mut(), ino, &[write], &new_blocks, epoch)
                            .await?;
                        cut_block = new_blocks;
                    }
                }
            }
            let delta = align4k(size) as i64 - align4k(old) as i64;
            if let Err(kind) = txn.charge(delta, 0).await? {
                return Err(FsError::QuotaExceeded(kind));
            }
            let now = self.now();
            inode.size = size;
            inode.mtime = now;
            inode.ctime = now;
            if !caller.is_root() {
                kill_priv(&mut inode);
            }
            txn.put_inode(&inode).await?;
            self.commit(txn).await?;
            self.shared().written.add(&cut_block);
            Ok(())
        })
        .await
    }

    /// `fallocate`: the default mode and `KEEP_SIZE` make the range part of the file (extending it
    /// unless `KEEP_SIZE`); `PUNCH_HOLE` (with `KEEP_SIZE`) and `ZERO_RANGE` make it read as zeros.
    /// `EINVAL` for a zero length, `EBADF` without a writable handle, `EOPNOTSUPP` for other modes.
    pub(crate) async fn do_fallocate(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: FallocateMode,
    ) -> FsResult<()> {
        let (file, _, write, _) = self.file_handle(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        if length == 0 {
            return Err(FsError::Invalid("fallocate length is zero"));
        }
        if mode.punch_hole && !mode.keep_size {
            return Err(FsError::NotSupported("PUNCH_HOLE requires KEEP_SIZE"));
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooBig)?;
        self.ensure_writable()?;
        let size = file.lock_state().await.size;
        if mode.punch_hole || mode.zero_range {
            let zero_end = if mode.keep_size { end.min(size) } else { end };
            self.write_zeros(caller, fh, offset, zero_end).await?;
        } else if !mode.keep_size && end > size {
            self.truncate_open(caller, file.ino, end, false).await?;
        }
        Ok(())
    }

    /// Overwrite `[offset, end)` with zeros through the write path; whole zero blocks become holes
    /// when flushed.
    async fn write_zeros(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        end: u64,
    ) -> FsResult<()> {
        let chunk = self.block_size().max(1 << 20);
        let zeros = vec![0u8; chunk as usize];
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(chunk);
            self.do_write(caller, fh, pos, &zeros[..n as usize]).await?;
            pos += n;
        }
        Ok(())
    }

    /// The next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) at or after `offset`, at block
    /// granularity: a block is data when it is buffered or stored, a hole when never written or
    /// punched; the end of the file is a hole. `ENXIO` at or past the end.
    pub(crate) async fn do_lseek(
        &self,
        _caller: &Caller,
        fh: FileHandle,
        offset: u64,
        whence: Whence,
    ) -> FsResult<u64> {
        let (file, ..) = self.file_handle(fh)?;
        let st = file.lock_state().await;
        if offset >= st.size {
            return Err(FsError::PastEnd);
        }
        let bs = self.block_size();
        let first = offset / bs;
        let blocks = st.size.div_ceil(bs);
        let stored_blocks = st.stored_size.div_ceil(bs).min(blocks);
        let mut stored = std::collections::HashSet::new();
        if first < stored_blocks {
            let mut r = self.reader();
            for (idx, _) in r.block_map(file.ino, first..stored_blocks).await? {
                stored.insert(idx);
            }
        }
        let is_data =
            |idx: u64| st.dirty.contains_key(&idx) || st.wb.holds(idx) || stored.contains(&idx);
        let found = (first..blocks).find(|idx| is_data(*idx) == (whence == Whence::Data));
        match (whence, found) {
            (Whence::Data, Some(idx)) => Ok(offset.max(idx * bs)),
            (Whence::Data, None) => Err(FsError::PastEnd),
            (Whence::Hole, Some(idx)) => Ok(offset.max(idx * bs).min(st.size)),
            (Whence::Hole, None) => Ok(st.size),
        }
    }
}
