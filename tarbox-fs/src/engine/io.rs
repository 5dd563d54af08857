//! File data: open, create, read, write, flush, fsync, release, truncate and fallocate.
//!
//! Every handle of one inode shares one [`OpenFile`], whose buffer holds written blocks until a
//! flush, so a read through any handle sees every completed write. Buffers are flushed on `flush`
//! (every `close`), `fsync`, `release`, before a truncate, and when they exceed the configured size;
//! a flush is one transaction, so data a program fsynced or closed is durable when the call returns.
//!
//! Block mappings read while a file is open are cached with it (close-to-open consistency across
//! engines, like NFS); decoded block contents are cached engine-wide by hash and never go stale.
//! Like NFS writes, a flush carries byte ranges, not whole blocks: it applies only the ranges
//! written through this volume onto the blocks as currently stored, and it only ever extends the
//! stored size, so writers on different engines to different parts of one file (even of one
//! block) all keep their data.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::Mutex as AsyncMutex;

use super::attr::{MAX_FILE_SIZE, kill_priv};
use super::audit::HandleStats;
use super::buffer::BlockBuf;
use super::namespace::NodeSpec;
use super::readahead::ReadAhead;
use super::writeback::Writeback;
use super::{Handle, Volume, align4k, lock, perm};
use crate::backend::BlockHash;
use crate::error::{FsError, FsResult};
use crate::types::{Caller, FileAttr, FileHandle, FileType, Ino, Inode, Timestamp};

/// The shared state of an inode with open handles in this volume.
pub(crate) struct OpenFile {
    pub(super) ino: Ino,
    /// Handles open on it; changed only under the volume's `open_files` lock.
    opens: AtomicU32,
    /// Set when its last name was removed while open: the last release deletes it.
    unlinked: AtomicBool,
    /// Set when the volume moved to another tree while the state was locked (the switch was
    /// noticed by an operation of this very file): the next locker drops the cached mappings.
    stale: AtomicBool,
    state: AsyncMutex<FileState>,
}

pub(super) struct FileState {
    /// Size including buffered writes.
    pub(super) size: u64,
    /// Size as stored.
    pub(super) stored_size: u64,
    /// Bytes charged to the tenant for this file (more than `align4k(stored_size)` while growth
    /// is reserved ahead of a flush under a byte quota).
    pub(super) charged: u64,
    /// Permission bits, to know whether a write must clear setuid/setgid.
    perm: u16,
    /// Blocks written since the last flush, by index (see `buffer.rs`).
    pub(super) dirty: BTreeMap<u64, BlockBuf>,
    /// The byte ranges of each dirty block this volume wrote (sorted, disjoint). A flush applies
    /// only these onto the block as currently stored, so writes of other engines to the rest of
    /// a shared block are not overwritten with stale bytes.
    pub(super) written: BTreeMap<u64, Vec<(usize, usize)>>,
    /// End of the furthest write since the last flush (0 if none): a flush never makes the file
    /// shorter than the store has it, only longer up to here.
    pub(super) write_end: u64,
    /// Modification time of the buffered writes.
    pub(super) mtime: Option<Timestamp>,
    /// Stored mappings seen so far (`None`: a hole).
    pub(super) map: HashMap<u64, Option<BlockHash>>,
    /// Whole blocks on their way to the store, and stored ones awaiting the next flush.
    pub(super) wb: Writeback,
    /// Where a sequential reader is (see `readahead.rs`).
    pub(super) readahead: ReadAhead,
    /// This file's share of the engine's held bytes, as last reported.
    held: HeldShare,
}

/// A file's share of the engine-wide count of held file data. Reported after the changes that
/// move data in or out (a write, a flush); a change not reported is caught up at the next one, and
/// the share is given back when the file's state is dropped.
#[derive(Debug)]
struct HeldShare {
    reported: u64,
    total: Arc<AtomicU64>,
}

impl Drop for HeldShare {
    fn drop(&mut self) {
        self.total.fetch_sub(self.reported, Ordering::Relaxed);
    }
}

impl FileState {
    /// Bring this file's share of the engine's held bytes up to date.
    pub(super) fn report_held(&mut self) {
        let now = self.dirty_bytes() + self.wb.held_bytes();
        let share = &mut self.held;
        if now > share.reported {
            share
                .total
                .fetch_add(now - share.reported, Ordering::Relaxed);
        } else {
            share
                .total
                .fetch_sub(share.reported - now, Ordering::Relaxed);
        }
        share.reported = now;
    }

    /// Bytes of memory the buffer holds.
    pub(super) fn dirty_bytes(&self) -> u64 {
        self.dirty.values().map(BlockBuf::held).sum()
    }

    /// Whether this file holds data not committed yet.
    fn holds_data(&self) -> bool {
        self.held.reported > 0
    }
}

impl OpenFile {
    fn new(inode: &Inode, held: Arc<AtomicU64>) -> OpenFile {
        OpenFile {
            ino: inode.ino,
            opens: AtomicU32::new(0),
            unlinked: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            state: AsyncMutex::new(FileState {
                size: inode.size,
                stored_size: inode.size,
                charged: align4k(inode.size),
                perm: inode.perm,
                dirty: BTreeMap::new(),
                written: BTreeMap::new(),
                write_end: 0,
                mtime: None,
                map: HashMap::new(),
                wb: Writeback::default(),
                readahead: ReadAhead::default(),
                held: HeldShare {
                    reported: 0,
                    total: held,
                },
            }),
        }
    }

    /// Lock the state, first dropping block mappings cached from a tree the volume has left.
    pub(super) async fn lock_state(&self) -> tokio::sync::MutexGuard<'_, FileState> {
        let mut st = self.state.lock().await;
        if self.stale.swap(false, Ordering::AcqRel) {
            st.map.clear();
        }
        st
    }

    /// Show buffered writes in `inode`'s attributes.
    pub(crate) async fn overlay(&self, inode: &mut Inode) {
        let st = self.state.lock().await;
        inode.size = st.size;
        if let Some(t) = st.mtime {
            inode.mtime = t;
            inode.ctime = t;
        }
    }

    /// Keep the cached permission bits in step with a setattr.
    pub(crate) async fn note_attr_change(&self, inode: &Inode) {
        self.state.lock().await.perm = inode.perm;
    }
}

/// Decode the `O_ACCMODE` bits: (read, write).
fn access_mode(flags: i32) -> FsResult<(bool, bool)> {
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => Ok((true, false)),
        libc::O_WRONLY => Ok((false, true)),
        libc::O_RDWR => Ok((true, true)),
        _ => Err(FsError::Invalid("invalid access mode")),
    }
}

impl Volume {
    /// Open an existing inode. `flags` are `open(2)` flags: the access mode, `O_TRUNC` and
    /// `O_APPEND` are honoured. `EISDIR` for writing a directory, `ELOOP` for a symlink, `EACCES`,
    /// `EROFS`.
    pub(crate) async fn do_open(
        &self,
        caller: &Caller,
        ino: Ino,
        flags: i32,
    ) -> FsResult<FileHandle> {
        // Read fresh: a file written and closed through another engine opens whole here
        // (close-to-open), however late that engine's announcement.
        let inode = self
            .fresh_reader()
            .inode(ino)
            .await?
            .ok_or(FsError::NotFound)?;
        let (read, write) = access_mode(flags)?;
        if inode.kind == FileType::Directory && (write || flags & libc::O_TRUNC != 0) {
            return Err(FsError::IsDir);
        }
        if inode.kind == FileType::Symlink {
            // Symlinks are resolved by the caller; opening the link itself is `O_NOFOLLOW`'s
            // ELOOP (a write through such a handle would corrupt the link's size).
            return Err(FsError::Loop);
        }
        if write && self.inner.read_only {
            return Err(FsError::ReadOnly);
        }
        let mut mask = 0;
        if read {
            mask |= perm::R;
        }
        if write || flags & libc::O_TRUNC != 0 {
            mask |= perm::W;
        }
        perm::check(caller, &inode, mask)?;
        self.open_checked(caller, inode, read, write, flags).await
    }

    async fn open_checked(
        &self,
        caller: &Caller,
        inode: Inode,
        read: bool,
        write: bool,
        flags: i32,
    ) -> FsResult<FileHandle> {
        let ino = inode.ino;
        let file = {
            let mut files = lock(&self.inner.open_files);
            let file = files
                .entry(ino)
                .or_insert_with(|| Arc::new(OpenFile::new(&inode, self.shared().held.clone())))
                .clone();
            file.opens.fetch_add(1, Ordering::Relaxed);
            file
        };
        let fh = self.new_handle(Handle::File {
            file,
            read,
            write,
            append: flags & libc::O_APPEND != 0,
            stats: Arc::default(),
        });
        if flags & libc::O_TRUNC != 0 && inode.kind == FileType::Regular {
            if let Err(e) = self.truncate_open(caller, ino, 0, true).await {
                let _ = self.do_release(caller, fh).await;
                return Err(e);
            }
        }
        Ok(fh)
    }

    /// Create and open a regular file (`open` with `O_CREAT`). With `O_EXCL` an existing name is
    /// `EEXIST`; without it the existing file is opened (and truncated with `O_TRUNC`).
    pub(crate) async fn do_create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, FileHandle)> {
        let (read, write) = access_mode(flags)?;
        let spec = NodeSpec {
            kind: FileType::Regular,
            perm: (mode & 0o7777) as u16,
            rdev: 0,
            target: &[],
        };
        match self.create_node(caller, parent, name, &spec).await {
            Ok(inode) => {
                // The creator may use the new file as requested whatever its mode says.
                let fh = self
                    .open_checked(caller, inode.clone(), read, write, flags & !libc::O_TRUNC)
                    .await?;
                Ok((self.attr_of(inode).await?, fh))
            }
            Err(FsError::Exists) if flags & libc::O_EXCL == 0 => {
                let attr = self.do_lookup(caller, parent, name).await?;
                let fh = self.do_open(caller, attr.ino, flags).await?;
                Ok((self.do_getattr(caller, attr.ino).await?, fh))
            }
            Err(e) => Err(e),
        }
    }

    /// Flush the buffered writes of every open file (before an unmount). Handles stay open.
    pub(crate) async fn flush_all(&self) -> FsResult<()> {
        let files: Vec<Arc<OpenFile>> = lock(&self.inner.open_files).values().cloned().collect();
        let mut first_error = None;
        for file in files {
            let mut st = file.lock_state().await;
            if let Err(e) = self.flush_file(file.ino, &mut st).await {
                tracing::error!(ino = %file.ino, error = %e, "flushing buffered writes failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// After the volume moved to another tree (a layer switch), forget what open files cached
    /// of the old one: their size and block mappings are re-read from the new tree. Buffers were
    /// flushed before the switch; a write that raced with it stays buffered and lands in the new
    /// tree, as if written just after the switch.
    pub(crate) async fn reload_open_files(&self) -> FsResult<()> {
        let files: Vec<Arc<OpenFile>> = lock(&self.inner.open_files).values().cloned().collect();
        let mut r = self.reader();
        for file in files {
            let inode = r.inode(file.ino).await?;
            // The switch may have been noticed by an operation of this file, which holds its
            // state: waiting for it would deadlock; it drops the stale mappings when done.
            let Ok(mut st) = file.state.try_lock() else {
                file.stale.store(true, Ordering::Release);
                continue;
            };
            let stored = inode.as_ref().map_or(0, |i| i.size);
            st.map.clear();
            st.stored_size = stored;
            st.size = stored.max(st.write_end);
            st.charged = align4k(stored);
            if let Some(i) = inode {
                st.perm = i.perm;
            }
        }
        Ok(())
    }

    pub(crate) fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        lock(&self.inner.open_files).get(&ino).cloned()
    }

    pub(crate) fn is_open(&self, ino: Ino) -> bool {
        lock(&self.inner.open_files).contains_key(&ino)
    }

    /// Whether `fh` is a file handle open for writing.
    pub(crate) fn handle_writes(&self, fh: FileHandle) -> FsResult<bool> {
        match self.handle(fh)? {
            Handle::File { write, .. } => Ok(write),
            Handle::Native { open, .. } => Ok(matches!(
                *open,
                super::native::NativeOpen::File { write: true, .. }
            )),
            Handle::Dir { .. } => Ok(false),
        }
    }

    /// An inode lost its last name while open: delete it at its last release, or now if that
    /// release already happened.
    pub(crate) async fn mark_unlinked(&self, ino: Ino) {
        let still_open = {
            let files = lock(&self.inner.open_files);
            match files.get(&ino) {
                Some(f) => {
                    f.unlinked.store(true, Ordering::Relaxed);
                    true
                }
                None => false,
            }
        };
        if !still_open {
            if let Err(e) = self.retrying(|| self.destroy_inode(ino)).await {
                tracing::warn!(%ino, error = %e, "could not reclaim unlinked inode; reclaimed at next start");
            }
        }
    }

    pub(super) fn file_handle(
        &self,
        fh: FileHandle,
    ) -> FsResult<(Arc<OpenFile>, bool, bool, bool)> {
        match self.handle(fh)? {
            Handle::File {
                file,
                read,
                write,
                append,
                ..
            } => Ok((file, read, write, append)),
            Handle::Dir { .. } => Err(FsError::IsDir),
            Handle::Native { .. } => Err(FsError::BadHandle),
        }
    }

    /// The inode of a file handle and its audit counters.
    pub(super) fn handle_audit(&self, fh: FileHandle) -> FsResult<(Ino, Arc<HandleStats>)> {
        match self.handle(fh)? {
            Handle::File { file, stats, .. } => Ok((file.ino, stats)),
            Handle::Dir { ino, .. } => Ok((ino, Arc::default())),
            Handle::Native { ino, stats, .. } => Ok((ino, stats)),
        }
    }

    pub(super) fn handle_is_dir(&self, fh: FileHandle) -> bool {
        matches!(self.handle(fh), Ok(Handle::Dir { .. }))
    }

    /// The directory a directory handle lists.
    pub(super) fn dir_of_handle(&self, fh: FileHandle) -> Option<Ino> {
        match self.handle(fh) {
            Ok(Handle::Dir { ino, .. }) => Some(ino),
            Ok(Handle::Native { ino, open, .. })
                if matches!(*open, super::native::NativeOpen::Dir { .. }) =>
            {
                Some(ino)
            }
            _ => None,
        }
    }

    /// Read up to `size` bytes at `offset`. Short only at end of file; holes read as zeros.
    pub(crate) async fn do_read(
        &self,
        _caller: &Caller,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let (file, read, _, _) = self.file_handle(fh)?;
        if !read {
            return Err(FsError::BadHandle);
        }
        let mut st = file.lock_state().await;
        if offset >= st.size || size == 0 {
            return Ok(Bytes::new());
        }
        let end = st.size.min(offset + u64::from(size));
        let bs = self.block_size();
        let first = offset / bs;
        let last = (end - 1) / bs;
        // The part of each block this read wants, relative to the block.
        let part = |idx: u64| {
            let block_start = idx * bs;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + bs) - block_start;
            (from as usize, to as usize)
        };
        // Blocks to read as stored: those not held here, and those written here only in part
        // where the read reaches beyond what was written (the rest of such a block is the one
        // stored; writes do not read it).
        let wanted: Vec<u64> = (first..=last)
            .filter(|&idx| match st.dirty.get(&idx) {
                Some(_) => {
                    let (from, to) = part(idx);
                    !covers_range(st.written.get(&idx), from, to)
                }
                None => !st.wb.holds(idx),
            })
            .collect();
        let stored = self.stored_blocks(file.ino, &mut st, &wanted).await?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for idx in first..=last {
            let (from, to) = part(idx);
            let held;
            let content: &[u8] = match st.dirty.get(&idx) {
                Some(buf) if wanted.binary_search(&idx).is_err() => {
                    // The read lies within a written range.
                    out.extend_from_slice(buf.get(from, to));
                    continue;
                }
                Some(buf) => {
                    let base = stored.get(&idx).map_or(&[][..], |b| &b[..]);
                    let ranges = st.written.get(&idx).map_or(&[][..], Vec::as_slice);
                    held = Bytes::from(overlay(base, buf, ranges, to));
                    &held
                }
                None => match st.wb.content(idx) {
                    Some(c) => {
                        held = c;
                        &held
                    }
                    None => stored.get(&idx).map(|b| &b[..]).unwrap_or(&[]),
                },
            };
            append_padded(&mut out, content, from, to);
        }
        self.read_ahead(&file, &mut st, offset, end);
        Ok(out.freeze())
    }

    /// Write `data` at `offset` (at end of file for `O_APPEND` handles). Returns the bytes written.
    /// `EBADF` if not open for writing, `EFBIG` past the maximum size, `ENOSPC` over quota.
    pub(crate) async fn do_write(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        let (file, _, write, append) = self.file_handle(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        self.ensure_writable()?;
        let mut st = file.lock_state().await;
        let offset = if append { st.size } else { offset };
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooBig)?;
        if data.is_empty() {
            return Ok(0);
        }
        if !caller.is_root() && st.perm & (libc::S_ISUID | libc::S_ISGID) as u16 != 0 {
            self.kill_priv_now(file.ino, &mut st).await?;
        }
        self.reserve(&mut st, end).await?;
        let bs = self.block_size();
        let first = offset / bs;
        let last = (end - 1) / bs;
        // A block written in part is not read first: the buffer holds what was written and
        // which ranges (`written`); reads lay those over the stored block, and a flush applies
        // them to the block as stored then. So a small write into a large file costs no I/O.
        for idx in first..=last {
            let block_start = idx * bs;
            let from = offset.max(block_start);
            let to = end.min(block_start + bs);
            if to - from != bs && !st.dirty.contains_key(&idx) {
                // A whole block on its way to the store, written again in part: start from it.
                if let Some(held) = st.wb.content(idx) {
                    st.dirty
                        .insert(idx, BlockBuf::whole(BytesMut::from(&held[..])));
                    st.written.insert(idx, vec![(0, bs as usize)]);
                }
            }
            let src = &data[(from - offset) as usize..(to - offset) as usize];
            if to - from == bs && !st.dirty.contains_key(&idx) {
                // A whole block written afresh: taken as it is, without zeroing a buffer first.
                st.dirty.insert(idx, BlockBuf::whole(BytesMut::from(src)));
                st.written.insert(idx, vec![(0, bs as usize)]);
                continue;
            }
            st.dirty
                .entry(idx)
                .or_default()
                .write((from - block_start) as usize, src);
            add_range(
                st.written.entry(idx).or_default(),
                (from - block_start) as usize,
                (to - block_start) as usize,
            );
        }
        st.size = st.size.max(end);
        st.write_end = st.write_end.max(end);
        st.mtime = Some(self.now());
        if st.dirty_bytes() >= self.shared().config.write_buffer_bytes {
            let handed = self.write_behind(file.ino, &mut st).await;
            st.report_held();
            handed?;
        } else {
            st.report_held();
        }
        // Over the engine's bound on data held by all open files: this file commits what it
        // holds, so a program writing to many files at once cannot pile up a buffer in each.
        let shared = self.shared();
        if st.holds_data() && shared.held.load(Ordering::Relaxed) > shared.config.held_limit_bytes {
            self.flush_file(file.ino, &mut st).await?;
        }
        Ok(data.len() as u32)
    }

    /// Under a byte quota, charge growth before accepting it so concurrent writers never overshoot;
    /// without one, growth is charged at flush.
    async fn reserve(&self, st: &mut FileState, end: u64) -> FsResult<()> {
        let needed = align4k(end);
        if needed <= st.charged || !self.has_byte_quota().await? {
            return Ok(());
        }
        // Reserve ahead in block-size steps to keep appends cheap, falling back to the exact need
        // near the limit.
        let ahead = align4k(end.saturating_add(self.block_size()));
        for target in [ahead, needed] {
            let delta = (target - st.charged) as i64;
            let charged = self
                .retrying(|| async {
                    let mut txn = self.begin(&[]).await?;
                    let r = txn.charge(delta, 0).await?;
                    self.commit(txn).await?;
                    Ok(r)
                })
                .await?;
            match charged {
                Ok(()) => {
                    st.charged = target;
                    return Ok(());
                }
                Err(kind) if target == needed => return Err(FsError::QuotaExceeded(kind)),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Whether the tenant has a byte quota. Asked on every write that grows a file, so the answer
    /// is remembered for a second: a quota set at run time governs write-time reservations within
    /// a second, and every flush is charged against the current limit regardless.
    async fn has_byte_quota(&self) -> FsResult<bool> {
        const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
        if let Some((at, known)) = *lock(&self.inner.byte_quota) {
            if at.elapsed() < FRESH {
                return Ok(known);
            }
        }
        let record = self.backend().tenant_by_id(self.inner.tenant.id).await?;
        let known = record.is_some_and(|t| t.quota.bytes.is_some());
        *lock(&self.inner.byte_quota) = Some((std::time::Instant::now(), known));
        Ok(known)
    }

    /// Clear setuid/setgid because an unprivileged caller writes (as Linux does on write).
    async fn kill_priv_now(&self, ino: Ino, st: &mut FileState) -> FsResult<()> {
        let perm = self
            .retrying(|| async {
                let mut txn = self.begin(&[ino]).await?;
                let mut inode = Volume::inode_in(txn.as_mut(), ino).await?;
                if kill_priv(&mut inode) {
                    inode.ctime = self.now();
                    txn.put_inode(&inode).await?;
                    self.commit(txn).await?;
                }
                Ok(inode.perm)
            })
            .await?;
        st.perm = perm;
        Ok(())
    }

    /// Flush buffered writes of `fh`'s file (called at every `close`).
    pub(crate) async fn do_flush(&self, _caller: &Caller, fh: FileHandle) -> FsResult<()> {
        let (file, ..) = self.file_handle(fh)?;
        let mut st = file.lock_state().await;
        self.flush_file(file.ino, &mut st).await
    }

    /// Make the file's data and attributes durable.
    pub(crate) async fn do_fsync(
        &self,
        caller: &Caller,
        fh: FileHandle,
        datasync: bool,
    ) -> FsResult<()> {
        match self.handle(fh)? {
            Handle::File { .. } => self.do_flush(caller, fh).await,
            Handle::Native { .. } => self.native_fsync(fh, datasync).await,
            // Directory changes are committed when each operation returns.
            Handle::Dir { .. } => Ok(()),
        }
    }

    /// Close a handle: flush, and delete the file if this was the last handle of an unlinked file.
    pub(crate) async fn do_release(&self, _caller: &Caller, fh: FileHandle) -> FsResult<()> {
        let handle = self.take_handle(fh)?;
        let Handle::File { file, .. } = handle else {
            return Ok(());
        };
        let flushed = {
            let mut st = file.lock_state().await;
            self.flush_file(file.ino, &mut st).await
        };
        let last_unlinked = {
            let mut files = lock(&self.inner.open_files);
            if file.opens.fetch_sub(1, Ordering::Relaxed) == 1 {
                files.remove(&file.ino);
                file.unlinked.load(Ordering::Relaxed)
            } else {
                false
            }
        };
        if last_unlinked {
            self.retrying(|| self.destroy_inode(file.ino)).await?;
        }
        flushed
    }

    /// Stored contents (trimmed) of the blocks `wanted` (sorted) that are not holes, using and
    /// filling the file's mapping cache and the engine's block cache.
    async fn stored_blocks(
        &self,
        ino: Ino,
        st: &mut FileState,
        wanted: &[u64],
    ) -> FsResult<HashMap<u64, Bytes>> {
        let limit = st.stored_size.div_ceil(self.block_size());
        let wanted: Vec<u64> = wanted.iter().copied().filter(|&i| i < limit).collect();
        let (Some(&lo), Some(&hi)) = (wanted.first(), wanted.last()) else {
            return Ok(HashMap::new());
        };
        let range = lo..hi + 1;
        if wanted.iter().any(|i| !st.map.contains_key(i)) {
            let mut r = self.reader();
            let found = r.block_map(ino, range.clone()).await?;
            for idx in range.clone() {
                st.map.insert(idx, None);
            }
            for (idx, hash) in found {
                st.map.insert(idx, Some(hash));
            }
        }
        let hashes: Vec<(u64, BlockHash)> = wanted
            .iter()
            .filter_map(|i| st.map.get(i).copied().flatten().map(|h| (*i, h)))
            .collect();
        let mut r = self.reader();
        self.fetch_blocks(r.as_mut(), &hashes).await
    }
}

/// Whether `ranges` (of one dirty block) cover the whole block.
pub(super) fn covers_block(ranges: Option<&Vec<(usize, usize)>>, bs: u64) -> bool {
    ranges.is_some_and(|r| r.as_slice() == [(0, bs as usize)])
}

/// Whether `ranges` (of one dirty block) cover `[from, to)`.
fn covers_range(ranges: Option<&Vec<(usize, usize)>>, from: usize, to: usize) -> bool {
    ranges.is_some_and(|r| r.iter().any(|&(a, b)| a <= from && to <= b))
}

/// The first `len` bytes of a block written here in part: `written` (sorted, disjoint ranges)
/// from `buf`, the rest from `base`, the block as stored (trimmed).
pub(super) fn overlay(
    base: &[u8],
    buf: &BlockBuf,
    written: &[(usize, usize)],
    len: usize,
) -> Vec<u8> {
    let mut block = vec![0u8; len];
    let keep = base.len().min(len);
    block[..keep].copy_from_slice(&base[..keep]);
    for &(a, b) in written {
        if a < len {
            let b = b.min(len);
            block[a..b].copy_from_slice(buf.get(a, b));
        }
    }
    block
}

/// Add `[from, to)` to sorted disjoint `ranges`, merging what touches it.
fn add_range(ranges: &mut Vec<(usize, usize)>, from: usize, to: usize) {
    ranges.push((from, to));
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *ranges = merged;
}

/// Append `content[from..to]` to `out`, reading zeros past the end of `content`.
fn append_padded(out: &mut BytesMut, content: &[u8], from: usize, to: usize) {
    let have = content.len().min(to);
    if from < have {
        out.extend_from_slice(&content[from..have]);
    }
    let zeros = to - from.max(have);
    if to > from.max(have) {
        out.resize(out.len() + zeros, 0);
    }
}
