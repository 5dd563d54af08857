//! Directory listing: opendir, readdir, readdirplus, releasedir.
//!
//! Offsets are stable: `.` is offset 1, `..` offset 2, and every other entry continues at its
//! cookie plus 2. Cookies are assigned when a name is bound and only grow, so entries added or
//! removed while a listing is in progress never make it skip or repeat a surviving entry.

use super::{Handle, Volume, perm};
use crate::error::{FsError, FsResult};
use crate::types::{Caller, DirEntry, FileAttr, FileHandle, FileType, Ino};

/// Entries returned by one readdir call; the frontend asks again from the last offset it used.
const PAGE: usize = 256;

impl Volume {
    /// Open a directory for listing. `ENOTDIR`, `EACCES` without read permission.
    pub async fn opendir(&self, caller: &Caller, ino: Ino) -> FsResult<FileHandle> {
        let inode = self.reader().inode(ino).await?.ok_or(FsError::NotFound)?;
        if inode.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        perm::check(caller, &inode, perm::R)?;
        Ok(self.new_handle(Handle::Dir { ino }))
    }

    fn dir_handle(&self, fh: FileHandle) -> FsResult<Ino> {
        match self.handle(fh)? {
            Handle::Dir { ino } => Ok(ino),
            Handle::File { .. } => Err(FsError::NotDir),
        }
    }

    /// The next entries after `offset` (0 to start). An empty result is the end.
    pub(crate) async fn do_readdir(
        &self,
        _caller: &Caller,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>> {
        let ino = self.dir_handle(fh)?;
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
        for e in r.list_dir(ino, after, PAGE).await? {
            out.push(DirEntry {
                name: e.name,
                ino: e.ino,
                kind: e.kind,
                next_offset: e.cookie + 2,
            });
        }
        Ok(out)
    }

    /// [`Volume::readdir`] with the attributes of each entry, fetched in one batch.
    pub(crate) async fn do_readdirplus(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        let entries = self.do_readdir(caller, fh, offset).await?;
        let inos: Vec<Ino> = entries.iter().map(|e| e.ino).collect();
        let mut inodes = self.reader().inodes(&inos).await?;
        inodes.sort_by_key(|i| i.ino);
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            // An entry removed between the listing and the batch read is skipped.
            if let Ok(pos) = inodes.binary_search_by_key(&e.ino, |i| i.ino) {
                let attr = self.attr_of(inodes[pos].clone()).await?;
                out.push((e, attr));
            }
        }
        Ok(out)
    }

    /// Close a directory handle.
    pub async fn releasedir(&self, _caller: &Caller, fh: FileHandle) -> FsResult<()> {
        self.take_handle(fh).map(|_| ())
    }
}
