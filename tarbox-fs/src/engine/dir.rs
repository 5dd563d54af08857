//! Directory listing: opendir, readdir, readdirplus, releasedir.
//!
//! Offsets are stable: `.` is offset 1, `..` offset 2, and every other entry continues at its
//! cookie plus 2. Cookies are assigned when a name is bound and only grow, so entries added or
//! removed while a listing is in progress never make it skip or repeat a surviving entry.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{Handle, Volume, lock, perm};
use crate::error::{FsError, FsResult};
use crate::types::{Caller, DirEntry, FileAttr, FileHandle, FileType, Ino};

/// Entries read from the store at once. A frontend's reply holds fewer (a FUSE readdir page fits
/// about 100 names, or 27 with attributes), so a handle keeps the rest for the calls that follow
/// instead of reading the same page again for each.
const PAGE: usize = 256;

/// What a directory handle fetched ahead: entries after offset `from`, in offset order, with
/// their attributes when fetched for `readdirplus`. Any commit of the volume makes it stale (the
/// volume's own changes show in a listing in progress; another engine's may show up to a page
/// late, which POSIX allows for changes after `opendir`).
#[derive(Debug, Default)]
pub(super) struct Listing {
    from: u64,
    entries: VecDeque<(DirEntry, Option<FileAttr>)>,
    /// Whether the store had nothing after the last buffered entry.
    end: bool,
    /// Whether `entries` were fetched with attributes.
    plus: bool,
    /// The volume's commit count when they were fetched.
    generation: u64,
    valid: bool,
}

impl Listing {
    /// The buffered entries after `offset`, if the buffer covers it (entries created after it was
    /// filled may be missing, as POSIX allows for entries added after `opendir`).
    fn after(
        &mut self,
        offset: u64,
        plus: bool,
        generation: u64,
    ) -> Option<Vec<(DirEntry, Option<FileAttr>)>> {
        if !self.valid
            || offset < self.from
            || (plus && !self.plus)
            || generation != self.generation
        {
            return None;
        }
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.next_offset <= offset)
        {
            self.entries.pop_front();
        }
        self.from = offset;
        if self.entries.is_empty() && !self.end {
            return None;
        }
        Some(self.entries.iter().cloned().collect())
    }
}

impl Volume {
    /// Open a directory for listing. `ENOTDIR`, `EACCES` without read permission.
    pub(crate) async fn do_opendir(&self, caller: &Caller, ino: Ino) -> FsResult<FileHandle> {
        let inode = self.reader().inode(ino).await?.ok_or(FsError::NotFound)?;
        if inode.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        perm::check(caller, &inode, perm::R)?;
        Ok(self.new_handle(Handle::Dir {
            ino,
            listing: Arc::default(),
        }))
    }

    fn dir_handle(&self, fh: FileHandle) -> FsResult<(Ino, Arc<Mutex<Listing>>)> {
        match self.handle(fh)? {
            Handle::Dir { ino, listing } => Ok((ino, listing)),
            Handle::File { .. } | Handle::Native { .. } => Err(FsError::NotDir),
        }
    }

    /// The next entries after `offset` (0 to start). An empty result is the end.
    pub(crate) async fn do_readdir(
        &self,
        _caller: &Caller,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>> {
        let entries = self.listing(fh, offset, false).await?;
        Ok(entries.into_iter().map(|(e, _)| e).collect())
    }

    /// [`Volume::readdir`] with the attributes of each entry, fetched in one batch.
    pub(crate) async fn do_readdirplus(
        &self,
        _caller: &Caller,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        let entries = self.listing(fh, offset, true).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(e, a)| a.map(|a| (e, a)))
            .collect())
    }

    /// Entries after `offset` from the handle's buffer, or fetched from the store into it.
    async fn listing(
        &self,
        fh: FileHandle,
        offset: u64,
        plus: bool,
    ) -> FsResult<Vec<(DirEntry, Option<FileAttr>)>> {
        let (ino, listing) = self.dir_handle(fh)?;
        let generation = self.inner.commits.load(Ordering::Acquire);
        if let Some(buffered) = lock(&listing).after(offset, plus, generation) {
            return Ok(buffered);
        }
        let (mut entries, end) = self.fetch_entries(ino, offset).await?;
        // Mount points hide the tree's entries of the same name and come after all of them.
        let mount_points = match self.native().filter(|n| n.holds_mount_points(ino)) {
            Some(native) => {
                entries.retain(|e| !native.hides(ino, &e.name));
                if end {
                    native.mount_point_entries(ino, offset)
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        let mut entries = if plus {
            self.with_attrs(entries).await?
        } else {
            entries.into_iter().map(|e| (e, None)).collect()
        };
        for e in mount_points {
            let attr = if plus {
                Some(self.native_getattr(e.ino)?)
            } else {
                None
            };
            entries.push((e, attr));
        }
        *lock(&listing) = Listing {
            from: offset,
            entries: entries.iter().cloned().collect(),
            end,
            plus,
            generation,
            valid: true,
        };
        Ok(entries)
    }

    /// Up to a page of entries after `offset` from the store, and whether they are the last.
    async fn fetch_entries(&self, ino: Ino, offset: u64) -> FsResult<(Vec<DirEntry>, bool)> {
        let mut r = self.reader();
        let mut out = Vec::new();
        if offset < 2 {
            let dir = r.inode(ino).await?.ok_or(FsError::NotFound)?;
            if offset == 0 {
                out.push(DirEntry {
                    name: b".".to_vec(),
                    ino,
                    kind: FileType::Directory,
                    next_offset: 1,
                });
            }
            out.push(DirEntry {
                name: b"..".to_vec(),
                ino: dir.parent,
                kind: FileType::Directory,
                next_offset: 2,
            });
        }
        let after = offset.saturating_sub(2);
        let page = r.list_dir(ino, after, PAGE).await?;
        let end = page.len() < PAGE;
        for e in page {
            out.push(DirEntry {
                name: e.name,
                ino: e.ino,
                kind: e.kind,
                next_offset: e.cookie + 2,
            });
        }
        Ok((out, end))
    }

    /// Entries with their attributes, read in one batch; an entry removed in between is skipped.
    async fn with_attrs(
        &self,
        entries: Vec<DirEntry>,
    ) -> FsResult<Vec<(DirEntry, Option<FileAttr>)>> {
        let inos: Vec<Ino> = entries.iter().map(|e| e.ino).collect();
        let mut inodes = self.reader().inodes(&inos).await?;
        inodes.sort_by_key(|i| i.ino);
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if let Ok(pos) = inodes.binary_search_by_key(&e.ino, |i| i.ino) {
                let attr = self.attr_of(inodes[pos].clone()).await?;
                out.push((e, Some(attr)));
            }
        }
        Ok(out)
    }

    /// Close a directory handle.
    pub(crate) async fn do_releasedir(&self, _caller: &Caller, fh: FileHandle) -> FsResult<()> {
        self.take_handle(fh).map(|_| ())
    }
}
