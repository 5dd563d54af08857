//! [`Filesystem`] for [`Volume`]: the file operations as frontends call them.
//!
//! Each method audits and measures the operation (`audit.rs`) around its implementation in the
//! family module (`namespace`, `attr`, `io`, `ranges`, `dir`, `xattr`), which holds the POSIX
//! rules. Errors are [`FsError`](crate::FsError)s; map them with `errno()`.

use async_trait::async_trait;
use bytes::Bytes;

use super::Volume;
use super::audit::Subject;
use crate::audit::AuditOp;
use crate::error::FsResult;
use crate::filesystem::Filesystem;
use crate::policy::Need;
use crate::types::{
    Caller, DirEntry, FallocateMode, FileAttr, FileHandle, Ino, RenameFlags, SetAttr, StatFs,
    Whence, XattrMode,
};

#[async_trait]
impl Filesystem for Volume {
    /// Look up `name` in directory `parent`. `ENOENT`, `ENOTDIR`, `EACCES` (search permission).
    async fn lookup(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<FileAttr> {
        let caller = &self.acting(caller);
        let attr = self
            .audited(
                caller,
                AuditOp::Lookup,
                Subject::Child(parent, name),
                async {
                    if self.is_native_child(parent, name) {
                        return self.native_lookup(caller, parent, name).await;
                    }
                    self.do_lookup(caller, parent, name).await
                },
            )
            .await?;
        self.learn_name(attr.ino, parent, name);
        Ok(attr)
    }

    /// Create a regular file, fifo, socket or device node (`mknod`).
    async fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        let caller = &self.acting(caller);
        let attr = self
            .audited(
                caller,
                AuditOp::Mknod,
                Subject::Child(parent, name),
                async {
                    if self.is_native_child(parent, name) {
                        return self.native_mknod(caller, parent, name, mode, rdev);
                    }
                    self.do_mknod(caller, parent, name, mode, rdev).await
                },
            )
            .await?;
        self.learn_name(attr.ino, parent, name);
        Ok(attr)
    }

    /// Create a directory.
    async fn mkdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<FileAttr> {
        let caller = &self.acting(caller);
        let attr = self
            .audited(
                caller,
                AuditOp::Mkdir,
                Subject::Child(parent, name),
                async {
                    if self.is_native_child(parent, name) {
                        return self.native_mkdir(caller, parent, name, mode);
                    }
                    self.do_mkdir(caller, parent, name, mode).await
                },
            )
            .await?;
        self.learn_name(attr.ino, parent, name);
        Ok(attr)
    }

    /// Create a symbolic link `name` in `parent` pointing to `target`.
    async fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<FileAttr> {
        let caller = &self.acting(caller);
        let attr = self
            .audited(
                caller,
                AuditOp::Symlink,
                Subject::Symlink(parent, name, target),
                async {
                    if self.is_native_child(parent, name) {
                        return self.native_symlink(caller, parent, name, target);
                    }
                    self.do_symlink(caller, parent, name, target).await
                },
            )
            .await?;
        self.learn_name(attr.ino, parent, name);
        Ok(attr)
    }

    /// The target of a symlink. `EINVAL` for other kinds.
    async fn readlink(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        let caller = &self.acting(caller);
        self.audited(caller, AuditOp::Readlink, Subject::Ino(ino), async {
            if self.is_native(ino) {
                return self.native_readlink(ino);
            }
            self.do_readlink(caller, ino).await
        })
        .await
    }

    /// Remove a non-directory name. An open file lives on until its last handle closes.
    async fn unlink(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        let caller = &self.acting(caller);
        let removed = self
            .audited(
                caller,
                AuditOp::Unlink,
                Subject::Child(parent, name),
                async {
                    if self.is_native_child(parent, name) {
                        return self.native_remove(caller, parent, name, false);
                    }
                    self.do_unlink(caller, parent, name).await
                },
            )
            .await?;
        self.forget_name(removed, parent, name);
        Ok(())
    }

    /// Remove an empty directory. `ENOTEMPTY`, `ENOTDIR`, `EBUSY` for the root.
    async fn rmdir(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        let caller = &self.acting(caller);
        let removed = self
            .audited(
                caller,
                AuditOp::Rmdir,
                Subject::Child(parent, name),
                async {
                    if self.is_native_child(parent, name) {
                        return self.native_remove(caller, parent, name, true);
                    }
                    self.refuse_removing_mount_points(parent, name).await?;
                    self.do_rmdir(caller, parent, name).await
                },
            )
            .await?;
        self.forget_name(removed, parent, name);
        Ok(())
    }

    /// Make `newname` in `newparent` another name of `ino`. `EPERM` for directories.
    async fn link(
        &self,
        caller: &Caller,
        ino: Ino,
        newparent: Ino,
        newname: &[u8],
    ) -> FsResult<FileAttr> {
        let caller = &self.acting(caller);
        let attr = self
            .audited(
                caller,
                AuditOp::Link,
                Subject::Link(ino, newparent, newname),
                async {
                    if self.is_native(ino) || self.is_native_child(newparent, newname) {
                        return self.native_link(caller, ino, newparent, newname);
                    }
                    self.do_link(caller, ino, newparent, newname).await
                },
            )
            .await?;
        self.learn_name(attr.ino, newparent, newname);
        Ok(attr)
    }

    /// Rename, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE` semantics from `flags`.
    async fn rename(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        let caller = &self.acting(caller);
        let renamed = self
            .audited(
                caller,
                AuditOp::Rename,
                Subject::Move(parent, name, newparent, newname),
                async {
                    if self.is_native_child(parent, name)
                        || self.is_native_child(newparent, newname)
                    {
                        return self.native_rename(
                            caller,
                            (parent, name),
                            (newparent, newname),
                            flags,
                        );
                    }
                    if !flags.exchange {
                        // Replacing a directory would take the mounts it holds with it.
                        self.refuse_removing_mount_points(newparent, newname)
                            .await?;
                    }
                    self.do_rename(caller, parent, name, newparent, newname, flags)
                        .await
                },
            )
            .await?;
        // The kernel moves its dentry without a lookup: learn the new names here.
        self.learn_name(renamed.moved, newparent, newname);
        if let Some(other) = renamed.exchanged {
            self.learn_name(other, parent, name);
        }
        Ok(())
    }

    /// Attributes of an inode (`stat`).
    async fn getattr(&self, caller: &Caller, ino: Ino) -> FsResult<FileAttr> {
        let caller = &self.acting(caller);
        self.audited(caller, AuditOp::Getattr, Subject::Ino(ino), async {
            if self.is_native(ino) {
                return self.native_getattr(ino);
            }
            self.do_getattr(caller, ino).await
        })
        .await
    }

    /// Change attributes: mode, owner, size, times (`chmod`, `chown`, `truncate`, `utimens`).
    async fn setattr(&self, caller: &Caller, ino: Ino, set: &SetAttr) -> FsResult<FileAttr> {
        let caller = &self.acting(caller);
        let only_size = set.size.is_some()
            && set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.atime.is_none()
            && set.mtime.is_none();
        let kind = if only_size {
            AuditOp::Truncate
        } else {
            AuditOp::Setattr
        };
        let detail = describe_setattr(set);
        let subject = match set.handle {
            Some(fh) => Subject::Handle(fh, None),
            None => Subject::Ino(ino),
        };
        self.audited_with_detail(caller, kind, subject, &detail, set.size, async {
            if self.is_native(ino) {
                return self.native_setattr(caller, ino, set);
            }
            self.do_setattr(caller, ino, set).await
        })
        .await
    }

    /// Check access like `access(2)` (`mask` of `R_OK`, `W_OK`, `X_OK`).
    async fn access(&self, caller: &Caller, ino: Ino, mask: u32) -> FsResult<()> {
        let caller = &self.acting(caller);
        let need = if mask & libc::W_OK as u32 != 0 {
            Need::Write
        } else {
            Need::Read
        };
        self.audited_needing(caller, AuditOp::Access, need, Subject::Ino(ino), async {
            if self.is_native(ino) {
                return self.native_access(caller, ino, mask);
            }
            self.do_access(caller, ino, mask).await
        })
        .await
    }

    /// Open an existing inode with `open(2)` flags (`O_TRUNC` is recorded as a truncate).
    async fn open(&self, caller: &Caller, ino: Ino, flags: i32) -> FsResult<FileHandle> {
        let caller = &self.acting(caller);
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let kind = if flags & libc::O_TRUNC != 0 && writing {
            AuditOp::Truncate
        } else {
            AuditOp::Open
        };
        let need = if writing || flags & libc::O_TRUNC != 0 {
            Need::Write
        } else {
            Need::Read
        };
        let fh = self
            .audited_needing(caller, kind, need, Subject::Ino(ino), async {
                if self.is_native(ino) {
                    return self.native_open(caller, ino, flags);
                }
                self.do_open(caller, ino, flags).await
            })
            .await?;
        self.note_opener(fh, caller);
        Ok(fh)
    }

    /// Create and open a regular file (`open` with `O_CREAT`; `O_EXCL` honoured).
    async fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, FileHandle)> {
        let caller = &self.acting(caller);
        let (attr, fh) = self
            .audited(
                caller,
                AuditOp::Create,
                Subject::Child(parent, name),
                async {
                    if self.is_native_child(parent, name) {
                        return self.native_create(caller, parent, name, mode, flags);
                    }
                    self.do_create(caller, parent, name, mode, flags).await
                },
            )
            .await?;
        self.learn_name(attr.ino, parent, name);
        self.note_opener(fh, caller);
        Ok((attr, fh))
    }

    /// Read up to `size` bytes at `offset`. Short only at end of file; holes read as zeros.
    async fn read(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let data = self
            .audited(
                caller,
                AuditOp::Read,
                Subject::Handle(fh, Some(offset)),
                async {
                    if self.is_native_handle(fh) {
                        return self.native_read(fh, offset, size).await;
                    }
                    self.do_read(caller, fh, offset, size).await
                },
            )
            .await?;
        self.count_io(fh, false, data.len() as u64);
        Ok(data)
    }

    /// Write `data` at `offset` (at end of file for `O_APPEND` handles). Returns the bytes
    /// written. `EBADF` if not open for writing, `EFBIG`, `ENOSPC` over quota.
    async fn write(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        let caller = &self.acting(caller);
        let n = self
            .audited(
                caller,
                AuditOp::Write,
                Subject::Handle(fh, Some(offset)),
                async {
                    if self.is_native_handle(fh) {
                        return self.native_write(fh, offset, data).await;
                    }
                    self.do_write(caller, fh, offset, data).await
                },
            )
            .await?;
        self.count_io(fh, true, u64::from(n));
        Ok(n)
    }

    /// Make the file's data and attributes durable.
    async fn fsync(&self, caller: &Caller, fh: FileHandle, datasync: bool) -> FsResult<()> {
        self.audited(
            caller,
            AuditOp::Fsync,
            Subject::Handle(fh, None),
            self.do_fsync(caller, fh, datasync),
        )
        .await
    }

    /// Close a handle: flush, and delete the file if this was the last handle of an unlinked
    /// file. At the `standard` level and above, records the handle's read and write totals.
    async fn release(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if self.handle_is_dir(fh) {
            return self.do_release(caller, fh).await;
        }
        self.audited(
            caller,
            AuditOp::Close,
            Subject::Handle(fh, None),
            self.do_release(caller, fh),
        )
        .await
    }

    /// Allocate, punch or zero a byte range (`fallocate(2)`).
    async fn fallocate(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: FallocateMode,
    ) -> FsResult<()> {
        let caller = &self.acting(caller);
        let detail = format!("{mode:?} length={length}");
        self.audited_with_detail(
            caller,
            AuditOp::Fallocate,
            Subject::Handle(fh, Some(offset)),
            &detail,
            Some(length),
            async {
                if self.is_native_handle(fh) {
                    return self.native_fallocate(fh, offset, length, mode).await;
                }
                self.do_fallocate(caller, fh, offset, length, mode).await
            },
        )
        .await
    }

    /// Entries of an open directory from `offset` (0 for the start), `.` and `..` first. Under
    /// an access policy, the entries the caller may not reach are left out.
    async fn readdir(
        &self,
        caller: &Caller,
        _ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>> {
        let caller = &self.acting(caller);
        self.reachable_page(
            caller,
            fh,
            offset,
            |e| e,
            move |offset| {
                self.audited(
                    caller,
                    AuditOp::Readdir,
                    Subject::Handle(fh, Some(offset)),
                    async move {
                        if self.is_native_handle(fh) {
                            return self.native_readdir(fh, offset);
                        }
                        self.do_readdir(caller, fh, offset).await
                    },
                )
            },
        )
        .await
    }

    /// Entries with their attributes (`READDIRPLUS`): the kernel learns each entry without a
    /// lookup, and so does the audit name cache.
    async fn readdirplus(
        &self,
        caller: &Caller,
        _ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        let caller = &self.acting(caller);
        let entries = self
            .reachable_page(
                caller,
                fh,
                offset,
                |(e, _)| e,
                move |offset| {
                    self.audited(
                        caller,
                        AuditOp::Readdir,
                        Subject::Handle(fh, Some(offset)),
                        async move {
                            if self.is_native_handle(fh) {
                                return self.native_readdirplus(caller, fh, offset);
                            }
                            self.do_readdirplus(caller, fh, offset).await
                        },
                    )
                },
            )
            .await?;
        if let Some(dir) = self.dir_of_handle(fh) {
            for (entry, _) in &entries {
                if entry.name != b"." && entry.name != b".." {
                    self.learn_name(entry.ino, dir, &entry.name);
                }
            }
        }
        Ok(entries)
    }

    /// Value of an extended attribute. `ENODATA` if absent.
    async fn getxattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        let caller = &self.acting(caller);
        self.audited(caller, AuditOp::Getxattr, Subject::Ino(ino), async {
            if self.is_native(ino) {
                return self.native_getxattr(caller, ino, name);
            }
            self.do_getxattr(caller, ino, name).await
        })
        .await
    }

    /// Names of the extended attributes of `ino`.
    async fn listxattr(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        let caller = &self.acting(caller);
        self.audited(caller, AuditOp::Listxattr, Subject::Ino(ino), async {
            if self.is_native(ino) {
                return self.native_listxattr(caller, ino);
            }
            self.do_listxattr(caller, ino).await
        })
        .await
    }

    /// Set an extended attribute (`XATTR_CREATE`/`XATTR_REPLACE` from `mode`).
    async fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        let caller = &self.acting(caller);
        let detail = crate::audit::path_display(name);
        self.audited_with_detail(
            caller,
            AuditOp::Setxattr,
            Subject::Ino(ino),
            &detail,
            Some(value.len() as u64),
            async {
                if self.is_native(ino) {
                    return self.native_set_xattr(caller, ino, name, Some((value, mode)));
                }
                self.do_setxattr(caller, ino, name, value, mode).await
            },
        )
        .await
    }

    /// Remove an extended attribute. `ENODATA` if absent.
    async fn removexattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<()> {
        let caller = &self.acting(caller);
        let detail = crate::audit::path_display(name);
        self.audited_with_detail(
            caller,
            AuditOp::Removexattr,
            Subject::Ino(ino),
            &detail,
            None,
            async {
                if self.is_native(ino) {
                    return self.native_set_xattr(caller, ino, name, None);
                }
                self.do_removexattr(caller, ino, name).await
            },
        )
        .await
    }

    async fn flush(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if self.is_native_handle(fh) {
            // Native writes went to the host as they came.
            return Ok(());
        }
        self.do_flush(caller, fh).await
    }

    /// Where the next data or hole is (`SEEK_DATA`/`SEEK_HOLE`), at block granularity.
    async fn lseek(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        whence: Whence,
    ) -> FsResult<u64> {
        if self.is_native_handle(fh) {
            return self.native_lseek(fh, offset, whence);
        }
        self.do_lseek(caller, fh, offset, whence).await
    }

    async fn opendir(&self, caller: &Caller, ino: Ino) -> FsResult<FileHandle> {
        let caller = &self.acting(caller);
        if self.is_native(ino) {
            return self.native_opendir(caller, ino);
        }
        self.do_opendir(caller, ino).await
    }

    async fn releasedir(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        self.do_releasedir(caller, fh).await
    }

    async fn statfs(&self, caller: &Caller) -> FsResult<StatFs> {
        self.do_statfs(caller).await
    }

    async fn sync_all(&self) -> FsResult<()> {
        self.flush_all().await
    }

    fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    fn invalidations(&self) -> Option<crate::filesystem::Invalidations> {
        let meta = self.inner.meta.as_ref()?;
        Some(meta.invalidations(self.inner.id))
    }
}

/// The attributes a setattr changes, for its event.
fn describe_setattr(set: &SetAttr) -> String {
    let mut parts = Vec::new();
    if let Some(m) = set.mode {
        parts.push(format!("mode={:o}", m & 0o7777));
    }
    if let Some(u) = set.uid {
        parts.push(format!("uid={u}"));
    }
    if let Some(g) = set.gid {
        parts.push(format!("gid={g}"));
    }
    if let Some(s) = set.size {
        parts.push(format!("size={s}"));
    }
    if set.atime.is_some() {
        parts.push("atime".to_string());
    }
    if set.mtime.is_some() {
        parts.push("mtime".to_string());
    }
    parts.join(" ")
}
