//! The front door of the engine: the POSIX operations every frontend calls.
//!
//! [`Filesystem`] is what the FUSE adapter, the CLI's file commands, the CSI node plugin and the
//! tests are written against. A [`Volume`](crate::Volume) implements it (one tenant's tree);
//! wrappers implement it by delegating to an inner filesystem: the `/.tarbox` control directory
//! ([`ControlFs`](crate::ControlFs)) and any [`Guard`] (read-only, fault injection, …) through
//! [`Guarded`].
//!
//! Every method takes the [`Caller`] on whose behalf it runs and returns an
//! [`FsError`](crate::FsError) that maps to exactly one errno, so a frontend never decides an
//! errno or a rule itself.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{FsError, FsResult};
use crate::types::{
    Caller, DirEntry, FallocateMode, FileAttr, FileHandle, Ino, RenameFlags, SetAttr, StatFs,
    Whence, XattrMode,
};

/// The POSIX operations of a tree, addressed by inode number and open handle, as the kernel's
/// VFS hands them to a filesystem.
#[async_trait]
pub trait Filesystem: Send + Sync + fmt::Debug {
    /// Look up `name` in directory `parent`. `ENOENT`, `ENOTDIR`, `EACCES` (search permission).
    async fn lookup(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<FileAttr>;

    /// Attributes of an inode (`stat`).
    async fn getattr(&self, caller: &Caller, ino: Ino) -> FsResult<FileAttr>;

    /// Change attributes: mode, owner, size, times (`chmod`, `chown`, `truncate`, `utimens`).
    async fn setattr(&self, caller: &Caller, ino: Ino, set: &SetAttr) -> FsResult<FileAttr>;

    /// Create a regular file, fifo, socket or device node (`mknod`).
    async fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr>;

    /// Create a directory.
    async fn mkdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<FileAttr>;

    /// Create a symbolic link `name` in `parent` pointing to `target`.
    async fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<FileAttr>;

    /// The target of a symlink. `EINVAL` for other kinds.
    async fn readlink(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<u8>>;

    /// Make `newname` in `newparent` another name of `ino`. `EPERM` for directories.
    async fn link(
        &self,
        caller: &Caller,
        ino: Ino,
        newparent: Ino,
        newname: &[u8],
    ) -> FsResult<FileAttr>;

    /// Remove a non-directory name. An open file lives on until its last handle closes.
    async fn unlink(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()>;

    /// Remove an empty directory. `ENOTEMPTY`, `ENOTDIR`, `EBUSY` for the root.
    async fn rmdir(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()>;

    /// Rename, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE` semantics from `flags`.
    async fn rename(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()>;

    /// Open an existing inode with `open(2)` flags.
    async fn open(&self, caller: &Caller, ino: Ino, flags: i32) -> FsResult<FileHandle>;

    /// Create and open a regular file (`open` with `O_CREAT`; `O_EXCL` honoured).
    async fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, FileHandle)>;

    /// Read up to `size` bytes at `offset`. Short only at end of file; holes read as zeros.
    async fn read(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes>;

    /// Write `data` at `offset` (at end of file for `O_APPEND` handles); returns the bytes written.
    async fn write(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32>;

    /// A `close` of one descriptor of the handle: make its writes durable.
    async fn flush(&self, caller: &Caller, fh: FileHandle) -> FsResult<()>;

    /// Make the file's (or the directory's) data and attributes durable.
    async fn fsync(&self, caller: &Caller, fh: FileHandle, datasync: bool) -> FsResult<()>;

    /// Close a handle of a file.
    async fn release(&self, caller: &Caller, fh: FileHandle) -> FsResult<()>;

    /// Allocate, punch or zero a byte range (`fallocate(2)`).
    async fn fallocate(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: FallocateMode,
    ) -> FsResult<()>;

    /// Where the next data or hole starts at or after `offset` (`lseek` with `SEEK_DATA` or
    /// `SEEK_HOLE`). `ENXIO` at or past the end of the file.
    async fn lseek(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        whence: Whence,
    ) -> FsResult<u64>;

    /// Open directory `ino` for listing. `ENOTDIR`, `EACCES`.
    async fn opendir(&self, caller: &Caller, ino: Ino) -> FsResult<FileHandle>;

    /// Entries of the directory `ino` open as `fh` after `offset` (0 for the start), `.` and `..`
    /// first. An empty result is the end.
    async fn readdir(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>>;

    /// [`Filesystem::readdir`] with each entry's attributes (`READDIRPLUS`).
    async fn readdirplus(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>>;

    /// Close a directory handle.
    async fn releasedir(&self, caller: &Caller, fh: FileHandle) -> FsResult<()>;

    /// Value of an extended attribute. `ENODATA` if absent.
    async fn getxattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>>;

    /// Names of the extended attributes of `ino`.
    async fn listxattr(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<Vec<u8>>>;

    /// Set an extended attribute (`XATTR_CREATE`/`XATTR_REPLACE` from `mode`).
    async fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()>;

    /// Remove an extended attribute. `ENODATA` if absent.
    async fn removexattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<()>;

    /// Check access like `access(2)` (`mask` of `R_OK`, `W_OK`, `X_OK`).
    async fn access(&self, caller: &Caller, ino: Ino, mask: u32) -> FsResult<()>;

    /// Sizes and free space, from the tenant's quota and usage.
    async fn statfs(&self, caller: &Caller) -> FsResult<StatFs>;

    /// Make every buffered write of every open file durable (`syncfs`; also run at unmount).
    async fn sync_all(&self) -> FsResult<()>;

    /// Whether every change is refused with `EROFS`.
    fn is_read_only(&self) -> bool;

    /// Whether the content behind `fh` is generated on open rather than stored, so that its size
    /// changes without writes: frontends with a page cache must bypass it (direct I/O).
    fn is_generated(&self, fh: FileHandle) -> bool {
        let _ = fh;
        false
    }

    /// A number that changes whenever the tree behind this filesystem was replaced as a whole
    /// (a rollback): frontends that let a kernel cache entries and attributes must let those
    /// caches expire before answering the request that caused it.
    fn generation(&self) -> u64 {
        0
    }

    /// What changed behind the kernel's back (through another engine, or another mount of this
    /// one), for frontends that let a kernel cache entries and attributes: they pass each
    /// [`Invalidation`] on (FUSE `notify_inval_entry`/`notify_inval_inode`). `None` when the
    /// filesystem cannot tell.
    fn invalidations(&self) -> Option<Invalidations> {
        None
    }
}

/// Something a kernel may hold in its caches that is no longer true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Attributes (and content) of an inode.
    Inode(Ino),
    /// The name `name` in directory `parent`.
    Entry { parent: Ino, name: Vec<u8> },
}

/// The stream of [`Invalidation`]s for one mount: changes it made itself are left out (its
/// kernel saw them).
#[derive(Debug)]
pub struct Invalidations {
    rx: tokio::sync::broadcast::Receiver<(u64, Invalidation)>,
    own: u64,
}

impl Invalidations {
    pub(crate) fn new(
        rx: tokio::sync::broadcast::Receiver<(u64, Invalidation)>,
        own: u64,
    ) -> Invalidations {
        Invalidations { rx, own }
    }

    /// The next invalidation; `None` once the filesystem is gone. A reader too slow to keep up
    /// misses some (logged): its kernel's caches then expire by their timeouts.
    pub async fn next(&mut self) -> Option<Invalidation> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match self.rx.recv().await {
                Ok((from, inv)) if from != self.own => return Some(inv),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "kernel invalidations fell behind");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Which operation a request is, with what a [`Guard`] needs to judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Lookup,
    Getattr,
    Setattr,
    Mknod,
    Mkdir,
    Symlink,
    Readlink,
    Link,
    Unlink,
    Rmdir,
    Rename,
    /// An open; `write` when the access mode writes or `O_TRUNC` is set.
    Open {
        write: bool,
    },
    Create,
    Read,
    Write,
    Flush,
    Fsync,
    Release,
    Fallocate,
    Lseek,
    Opendir,
    Readdir,
    Releasedir,
    Getxattr,
    Listxattr,
    Setxattr,
    Removexattr,
    Access {
        write: bool,
    },
    Statfs,
}

impl Request {
    /// Whether the request changes the tree (names, attributes, contents or xattrs).
    pub fn changes(self) -> bool {
        matches!(
            self,
            Request::Setattr
                | Request::Mknod
                | Request::Mkdir
                | Request::Symlink
                | Request::Link
                | Request::Unlink
                | Request::Rmdir
                | Request::Rename
                | Request::Open { write: true }
                | Request::Create
                | Request::Write
                | Request::Fallocate
                | Request::Setxattr
                | Request::Removexattr
                | Request::Access { write: true }
        )
    }

    fn open(flags: i32) -> Request {
        Request::Open {
            write: flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0,
        }
    }
}

/// A check run before every request of a [`Guarded`] filesystem: `Err` refuses the request with
/// that error before the inner filesystem sees it.
pub trait Guard: Send + Sync + fmt::Debug {
    fn check(&self, caller: &Caller, request: Request) -> FsResult<()>;

    /// Whether the guard refuses every change (the guarded filesystem then says it is read-only).
    fn refuses_changes(&self) -> bool {
        false
    }
}

/// Refuses every change with `EROFS`: a read-only view of any filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOnly;

impl Guard for ReadOnly {
    fn check(&self, _caller: &Caller, request: Request) -> FsResult<()> {
        if request.changes() {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn refuses_changes(&self) -> bool {
        true
    }
}

/// A filesystem whose requests pass a [`Guard`] first. `Guarded::new(volume, ReadOnly)` is a
/// read-only volume; a guard that fails chosen requests injects faults.
#[derive(Debug, Clone)]
pub struct Guarded<G> {
    inner: Arc<dyn Filesystem>,
    guard: G,
}

impl<G: Guard> Guarded<G> {
    pub fn new(inner: Arc<dyn Filesystem>, guard: G) -> Guarded<G> {
        Guarded { inner, guard }
    }

    /// The guard, e.g. to inspect what a fault injector saw.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

#[async_trait]
impl<G: Guard> Filesystem for Guarded<G> {
    async fn lookup(&self, c: &Caller, parent: Ino, name: &[u8]) -> FsResult<FileAttr> {
        self.guard.check(c, Request::Lookup)?;
        self.inner.lookup(c, parent, name).await
    }
    async fn getattr(&self, c: &Caller, ino: Ino) -> FsResult<FileAttr> {
        self.guard.check(c, Request::Getattr)?;
        self.inner.getattr(c, ino).await
    }
    async fn setattr(&self, c: &Caller, ino: Ino, set: &SetAttr) -> FsResult<FileAttr> {
        self.guard.check(c, Request::Setattr)?;
        self.inner.setattr(c, ino, set).await
    }
    async fn mknod(
        &self,
        c: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        self.guard.check(c, Request::Mknod)?;
        self.inner.mknod(c, parent, name, mode, rdev).await
    }
    async fn mkdir(&self, c: &Caller, parent: Ino, name: &[u8], mode: u32) -> FsResult<FileAttr> {
        self.guard.check(c, Request::Mkdir)?;
        self.inner.mkdir(c, parent, name, mode).await
    }
    async fn symlink(
        &self,
        c: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<FileAttr> {
        self.guard.check(c, Request::Symlink)?;
        self.inner.symlink(c, parent, name, target).await
    }
    async fn readlink(&self, c: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        self.guard.check(c, Request::Readlink)?;
        self.inner.readlink(c, ino).await
    }
    async fn link(&self, c: &Caller, ino: Ino, np: Ino, nn: &[u8]) -> FsResult<FileAttr> {
        self.guard.check(c, Request::Link)?;
        self.inner.link(c, ino, np, nn).await
    }
    async fn unlink(&self, c: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.guard.check(c, Request::Unlink)?;
        self.inner.unlink(c, parent, name).await
    }
    async fn rmdir(&self, c: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.guard.check(c, Request::Rmdir)?;
        self.inner.rmdir(c, parent, name).await
    }
    async fn rename(
        &self,
        c: &Caller,
        parent: Ino,
        name: &[u8],
        np: Ino,
        nn: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.guard.check(c, Request::Rename)?;
        self.inner.rename(c, parent, name, np, nn, flags).await
    }
    async fn open(&self, c: &Caller, ino: Ino, flags: i32) -> FsResult<FileHandle> {
        self.guard.check(c, Request::open(flags))?;
        self.inner.open(c, ino, flags).await
    }
    async fn create(
        &self,
        c: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, FileHandle)> {
        self.guard.check(c, Request::Create)?;
        self.inner.create(c, parent, name, mode, flags).await
    }
    async fn read(&self, c: &Caller, fh: FileHandle, offset: u64, size: u32) -> FsResult<Bytes> {
        self.guard.check(c, Request::Read)?;
        self.inner.read(c, fh, offset, size).await
    }
    async fn write(&self, c: &Caller, fh: FileHandle, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.guard.check(c, Request::Write)?;
        self.inner.write(c, fh, offset, data).await
    }
    async fn flush(&self, c: &Caller, fh: FileHandle) -> FsResult<()> {
        self.guard.check(c, Request::Flush)?;
        self.inner.flush(c, fh).await
    }
    async fn fsync(&self, c: &Caller, fh: FileHandle, datasync: bool) -> FsResult<()> {
        self.guard.check(c, Request::Fsync)?;
        self.inner.fsync(c, fh, datasync).await
    }
    async fn release(&self, c: &Caller, fh: FileHandle) -> FsResult<()> {
        // A handle that was opened is always closed, whatever the guard thinks of it now.
        let checked = self.guard.check(c, Request::Release);
        self.inner.release(c, fh).await?;
        checked
    }
    async fn fallocate(
        &self,
        c: &Caller,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: FallocateMode,
    ) -> FsResult<()> {
        self.guard.check(c, Request::Fallocate)?;
        self.inner.fallocate(c, fh, offset, length, mode).await
    }
    async fn lseek(&self, c: &Caller, fh: FileHandle, offset: u64, w: Whence) -> FsResult<u64> {
        self.guard.check(c, Request::Lseek)?;
        self.inner.lseek(c, fh, offset, w).await
    }
    async fn opendir(&self, c: &Caller, ino: Ino) -> FsResult<FileHandle> {
        self.guard.check(c, Request::Opendir)?;
        self.inner.opendir(c, ino).await
    }
    async fn readdir(
        &self,
        c: &Caller,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>> {
        self.guard.check(c, Request::Readdir)?;
        self.inner.readdir(c, ino, fh, offset).await
    }
    async fn readdirplus(
        &self,
        c: &Caller,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        self.guard.check(c, Request::Readdir)?;
        self.inner.readdirplus(c, ino, fh, offset).await
    }
    async fn releasedir(&self, c: &Caller, fh: FileHandle) -> FsResult<()> {
        let checked = self.guard.check(c, Request::Releasedir);
        self.inner.releasedir(c, fh).await?;
        checked
    }
    async fn getxattr(&self, c: &Caller, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        self.guard.check(c, Request::Getxattr)?;
        self.inner.getxattr(c, ino, name).await
    }
    async fn listxattr(&self, c: &Caller, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.guard.check(c, Request::Listxattr)?;
        self.inner.listxattr(c, ino).await
    }
    async fn setxattr(
        &self,
        c: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        self.guard.check(c, Request::Setxattr)?;
        self.inner.setxattr(c, ino, name, value, mode).await
    }
    async fn removexattr(&self, c: &Caller, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.guard.check(c, Request::Removexattr)?;
        self.inner.removexattr(c, ino, name).await
    }
    async fn access(&self, c: &Caller, ino: Ino, mask: u32) -> FsResult<()> {
        self.guard.check(
            c,
            Request::Access {
                write: mask & libc::W_OK as u32 != 0,
            },
        )?;
        self.inner.access(c, ino, mask).await
    }
    async fn statfs(&self, c: &Caller) -> FsResult<StatFs> {
        self.guard.check(c, Request::Statfs)?;
        self.inner.statfs(c).await
    }
    async fn sync_all(&self) -> FsResult<()> {
        self.inner.sync_all().await
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only() || self.guard.refuses_changes()
    }
    fn is_generated(&self, fh: FileHandle) -> bool {
        self.inner.is_generated(fh)
    }
    fn generation(&self) -> u64 {
        self.inner.generation()
    }
    fn invalidations(&self) -> Option<Invalidations> {
        self.inner.invalidations()
    }
}
