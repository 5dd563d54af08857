//! Attributes: getattr, setattr (chmod, chown, truncate, utimes), access and statfs.

use super::{Volume, names, perm};
use crate::error::{FsError, FsResult};
use crate::types::{Caller, FileAttr, FileType, Ino, Inode, SetAttr, StatFs, TimeSet};

/// Largest file size the engine accepts (as ext4 with 4 KiB blocks: 16 TiB).
pub(crate) const MAX_FILE_SIZE: u64 = 16 << 40;

const S_ISUID: u16 = libc::S_ISUID as u16;
const S_ISGID: u16 = libc::S_ISGID as u16;
const S_IXGRP: u16 = libc::S_IXGRP as u16;

/// Clear setuid always, and setgid when it means "run as group" (group-execute set), as Linux does
/// on write and chown of a non-directory.
pub(crate) fn kill_priv(inode: &mut Inode) -> bool {
    let before = inode.perm;
    inode.perm &= !S_ISUID;
    if inode.perm & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
        inode.perm &= !S_ISGID;
    }
    before != inode.perm
}

impl Volume {
    /// Attributes of `ino`. `ENOENT` if it does not exist.
    pub(crate) async fn do_getattr(&self, _caller: &Caller, ino: Ino) -> FsResult<FileAttr> {
        let inode = self.reader().inode(ino).await?.ok_or(FsError::NotFound)?;
        self.attr_of(inode).await
    }

    /// `stat` view of a stored inode, including writes still buffered in open handles.
    pub(crate) async fn attr_of(&self, mut inode: Inode) -> FsResult<FileAttr> {
        if let Some(file) = self.open_file(inode.ino) {
            file.overlay(&mut inode).await;
        }
        let blksize = self.inner.tenant.block_size;
        Ok(FileAttr {
            ino: inode.ino,
            kind: inode.kind,
            perm: inode.perm,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            size: inode.size,
            blocks: inode.size.div_ceil(512),
            blksize,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            btime: inode.btime,
            rdev: inode.rdev,
        })
    }

    /// Change attributes. Rules, as Linux applies them:
    /// - mode: owner or root (`EPERM`); a non-member non-root caller loses setgid silently.
    /// - uid: root only, or the owner "changing" it to itself; gid: root, or the owner to a group
    ///   it belongs to (`EPERM`). Changing either clears setuid/setgid of non-directories.
    /// - size: write permission or a handle open for writing (`EACCES`), `EISDIR` for directories,
    ///   `EINVAL` for other non-regular files, `EFBIG` beyond the maximum size.
    /// - times: explicit values need ownership (`EPERM`); "now" needs ownership or write access
    ///   (`EACCES`).
    pub(crate) async fn do_setattr(
        &self,
        caller: &Caller,
        ino: Ino,
        set: &SetAttr,
    ) -> FsResult<FileAttr> {
        self.ensure_writable()?;
        // Lookups must see a directory's new mode or owner at once.
        if let Some(size) = set.size {
            if size > MAX_FILE_SIZE {
                return Err(FsError::FileTooBig);
            }
            let writable_handle = match set.handle {
                Some(fh) => self.handle_writes(fh)?,
                None => false,
            };
            self.truncate(caller, ino, size, writable_handle).await?;
        }
        let only_size = SetAttr {
            size: set.size,
            handle: set.handle,
            ..SetAttr::default()
        };
        if *set == only_size {
            return self.do_getattr(caller, ino).await;
        }
        let inode = self
            .retrying(|| self.setattr_once(caller, ino, set))
            .await?;
        self.attr_of(inode).await
    }

    async fn setattr_once(&self, caller: &Caller, ino: Ino, set: &SetAttr) -> FsResult<Inode> {
        let mut txn = self.begin(&[ino]).await?;
        let mut inode = Volume::inode_in(txn.as_mut(), ino).await?;
        let now = self.now();
        let owner = perm::is_owner(caller, &inode);
        if let Some(mode) = set.mode {
            if !owner {
                return Err(FsError::NotPermitted);
            }
            let mut bits = (mode & 0o7777) as u16;
            if !caller.is_root() && !caller.in_group(inode.gid) {
                bits &= !S_ISGID;
            }
            inode.perm = bits;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let uid_change = set.uid.is_some_and(|u| u != inode.uid);
            let gid_change = set.gid.is_some_and(|g| g != inode.gid);
            if !caller.is_root() {
                if uid_change || (set.uid.is_some() && caller.uid != inode.uid) {
                    return Err(FsError::NotPermitted);
                }
                if let Some(g) = set.gid {
                    if caller.uid != inode.uid || (gid_change && !caller.in_group(g)) {
                        return Err(FsError::NotPermitted);
                    }
                }
            }
            if inode.kind != FileType::Directory && set.mode.is_none() {
                kill_priv(&mut inode);
            }
            if let Some(u) = set.uid {
                inode.uid = u;
            }
            if let Some(g) = set.gid {
                inode.gid = g;
            }
        }
        for (which, time) in [(0, set.atime), (1, set.mtime)] {
            let Some(time) = time else { continue };
            let value = match time {
                TimeSet::Now => {
                    if !owner && !perm::allowed(caller, &inode, perm::W) {
                        return Err(FsError::PermissionDenied);
                    }
                    now
                }
                TimeSet::At(t) => {
                    if !owner {
                        return Err(FsError::NotPermitted);
                    }
                    t
                }
            };
            if which == 0 {
                inode.atime = value;
            } else {
                inode.mtime = value;
            }
        }
        inode.ctime = match set.ctime {
            Some(t) if caller.is_root() => t,
            _ => now,
        };
        txn.put_inode(&inode).await?;
        self.commit(txn).await?;
        // A lookup that read the old directory while this ran must not keep it.
        if let Some(file) = self.open_file(ino) {
            file.note_attr_change(&inode).await;
        }
        Ok(inode)
    }

    /// `access(2)`: `EACCES` if `mask` (`R_OK|W_OK|X_OK`, or `F_OK` = 0) is not granted.
    pub(crate) async fn do_access(&self, caller: &Caller, ino: Ino, mask: u32) -> FsResult<()> {
        let inode = self.reader().inode(ino).await?.ok_or(FsError::NotFound)?;
        let mask = (mask & 7) as u16;
        if mask & perm::W != 0 && self.inner.read_only {
            return Err(FsError::ReadOnly);
        }
        if mask == 0 {
            return Ok(());
        }
        perm::check(caller, &inode, mask)
    }

    /// `statfs`: the quota as the volume size (or a large nominal size without one), usage as
    /// used space, so `df` shows what the tenant may still write.
    pub(crate) async fn do_statfs(&self, _caller: &Caller) -> FsResult<StatFs> {
        let tenant = self.inner.tenant.id;
        let usage = self.backend().usage(tenant).await?;
        let quota = self
            .backend()
            .tenant_by_id(tenant)
            .await?
            .map(|t| t.quota)
            .unwrap_or_default();
        const UNITS: u64 = 4096;
        // Without a quota, report 1 PiB so tools that check free space proceed.
        let total_bytes = quota.bytes.unwrap_or(1 << 50);
        let blocks = total_bytes / UNITS;
        let used = usage.bytes.div_ceil(UNITS);
        let free = blocks.saturating_sub(used);
        let files = quota.inodes.unwrap_or(1 << 32);
        Ok(StatFs {
            block_size: UNITS as u32,
            blocks,
            blocks_free: free,
            blocks_available: free,
            files,
            files_free: files.saturating_sub(usage.inodes),
            name_max: names::NAME_MAX as u32,
        })
    }
}
