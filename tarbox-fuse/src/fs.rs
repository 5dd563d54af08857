//! The fuser `Filesystem` implementation: each callback converts its arguments, hands the engine
//! call and the reply to a Tokio task, and returns at once, so a slow database call never blocks
//! other requests. No POSIX decision is made here and no errno is chosen: flags are decoded by the
//! engine's types, and every request the engine does not serve is answered with the engine's
//! error for it, quietly (fuser's defaults would log a warning per call).

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle as FuseFh, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags,
    PollNotifier, RenameFlags as FuseRenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tarbox_fs::{
    Caller, FallocateMode, FileHandle, Filesystem, FsError, FsResult, RenameFlags, SetAttr, Whence,
    XattrMode,
};
use tokio::runtime::Handle;
use tracing::debug;

use crate::convert::{self, GroupCache, attr, errno, ino, node};

/// How long the kernel may cache what it learns.
#[derive(Debug, Clone, Copy)]
pub struct CacheTimeouts {
    /// Attributes (`stat`).
    pub attr: Duration,
    /// Name lookups.
    pub entry: Duration,
}

impl Default for CacheTimeouts {
    fn default() -> Self {
        CacheTimeouts {
            attr: Duration::from_secs(1),
            entry: Duration::from_secs(1),
        }
    }
}

pub(crate) struct TarboxFuse {
    fs: Arc<dyn Filesystem>,
    runtime: Handle,
    groups: Arc<GroupCache>,
    timeouts: CacheTimeouts,
}

/// Inode generation: inode numbers are never reused, so it is constant.
const GENERATION: Generation = Generation(0);
/// Largest read or write request the kernel may send.
const MAX_IO: u32 = 1 << 20;

impl TarboxFuse {
    pub(crate) fn new(
        fs: Arc<dyn Filesystem>,
        runtime: Handle,
        timeouts: CacheTimeouts,
        callers: GroupCache,
    ) -> TarboxFuse {
        TarboxFuse {
            fs,
            runtime,
            groups: Arc::new(callers),
            timeouts,
        }
    }

    fn caller(&self, req: &Request) -> Caller {
        self.groups.caller(req)
    }

    /// Run `op` on the runtime and pass its result to `done` (which sends the reply).
    fn run<T, Fut>(&self, op: Fut, done: impl FnOnce(FsResult<T>) + Send + 'static)
    where
        Fut: Future<Output = FsResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime.spawn(async move {
            let result = op.await;
            if let Err(e) = &result {
                debug!(error = %e, "request failed");
            }
            done(result)
        });
    }

    fn reply_entry(
        &self,
        reply: ReplyEntry,
    ) -> impl FnOnce(FsResult<tarbox_fs::FileAttr>) + Send + 'static {
        let ttl = self.timeouts.entry;
        move |r| match r {
            Ok(a) => reply.entry(&ttl, &attr(&a), GENERATION),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn reply_attr(
        &self,
        reply: ReplyAttr,
    ) -> impl FnOnce(FsResult<tarbox_fs::FileAttr>) + Send + 'static {
        let ttl = self.timeouts.attr;
        move |r| match r {
            Ok(a) => reply.attr(&ttl, &attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// Generated control files bypass the page cache: their size changes without writes.
fn open_flags(fs: &dyn Filesystem, fh: FileHandle) -> FopenFlags {
    if fs.is_generated(fh) {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

fn reply_empty(reply: ReplyEmpty) -> impl FnOnce(FsResult<()>) + Send + 'static {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answer a getxattr/listxattr: its size for a zero-sized request, `ERANGE` if it does not fit.
fn reply_xattr(reply: ReplyXattr, size: u32) -> impl FnOnce(FsResult<Vec<u8>>) + Send + 'static {
    move |r| match r {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() > size as usize => reply.error(errno(&FsError::Range)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

impl fuser::Filesystem for TarboxFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // The engine clears setuid/setgid itself on write, truncate and chown.
            | InitFlags::FUSE_HANDLE_KILLPRIV
            // ... and so the kernel may remember that a file has no privileges to drop
            // (SB_NOSEC): without it, every write() first asks for security.capability, two
            // database round trips per write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let supported = config.capabilities() & wanted;
        if let Err(unsupported) = config.add_capabilities(supported) {
            debug!(?unsupported, "kernel refused FUSE capabilities");
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        let volume = self.fs.clone();
        // Closing handles flushes them; the kernel releases every handle before unmounting, this
        // only covers a forced unmount.
        self.runtime.spawn(async move { volume.sync_all().await });
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        self.run(
            async move { v.lookup(&c, ino(parent), &name).await },
            self.reply_entry(reply),
        );
    }

    fn getattr(&self, req: &Request, i: INodeNo, _fh: Option<FuseFh>, reply: ReplyAttr) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.getattr(&c, ino(i)).await },
            self.reply_attr(reply),
        );
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FuseFh>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(convert::time_set),
            mtime: mtime.map(convert::time_set),
            ctime: ctime.map(convert::timestamp),
            handle: fh.map(|f| FileHandle(f.0)),
        };
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.setattr(&c, ino(i), &set).await },
            self.reply_attr(reply),
        );
    }

    fn readlink(&self, req: &Request, i: INodeNo, reply: ReplyData) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.readlink(&c, ino(i)).await },
            move |r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        let mode = mode & !(umask & 0o777);
        self.run(
            async move { v.mknod(&c, ino(parent), &name, mode, rdev).await },
            self.reply_entry(reply),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        let mode = mode & !(umask & 0o777);
        self.run(
            async move { v.mkdir(&c, ino(parent), &name, mode).await },
            self.reply_entry(reply),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        self.run(
            async move { v.unlink(&c, ino(parent), &name).await },
            reply_empty(reply),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        self.run(
            async move { v.rmdir(&c, ino(parent), &name).await },
            reply_empty(reply),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(link_name));
        let target = target.as_os_str().as_bytes().to_vec();
        self.run(
            async move { v.symlink(&c, ino(parent), &name, &target).await },
            self.reply_entry(reply),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        let flags = match RenameFlags::from_linux(flags.bits()) {
            Ok(flags) => flags,
            Err(e) => return reply.error(errno(&e)),
        };
        let (v, c) = (self.fs.clone(), self.caller(req));
        let (name, newname) = (convert::name(name), convert::name(newname));
        self.run(
            async move {
                v.rename(&c, ino(parent), &name, ino(newparent), &newname, flags)
                    .await
            },
            reply_empty(reply),
        );
    }

    fn link(
        &self,
        req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(newname));
        self.run(
            async move { v.link(&c, ino(i), ino(newparent), &name).await },
            self.reply_entry(reply),
        );
    }

    fn open(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move {
                let fh = v.open(&c, ino(i), flags.0).await?;
                Ok((fh, open_flags(v.as_ref(), fh)))
            },
            move |r| match r {
                Ok((fh, flags)) => reply.opened(FuseFh(fh.0), flags),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn read(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FuseFh,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.read(&c, FileHandle(fh.0), offset, size).await },
            move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FuseFh,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (v, c, data) = (self.fs.clone(), self.caller(req), data.to_vec());
        let settle = self.timeouts.attr.max(self.timeouts.entry);
        self.run(
            async move {
                let generation = v.generation();
                let n = v.write(&c, FileHandle(fh.0), offset, &data).await?;
                if v.generation() != generation {
                    // A control command replaced the tree. The kernel may still hold entries and
                    // attributes of the old one for up to their timeout: answer once they have
                    // expired, so that whatever the caller does next sees the new tree.
                    tokio::time::sleep(settle).await;
                }
                Ok(n)
            },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn flush(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FuseFh,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.flush(&c, FileHandle(fh.0)).await },
            reply_empty(reply),
        );
    }

    fn release(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FuseFh,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.release(&c, FileHandle(fh.0)).await },
            reply_empty(reply),
        );
    }

    fn fsync(&self, req: &Request, _i: INodeNo, fh: FuseFh, datasync: bool, reply: ReplyEmpty) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.fsync(&c, FileHandle(fh.0), datasync).await },
            reply_empty(reply),
        );
    }

    fn opendir(&self, req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.opendir(&c, ino(i)).await },
            move |r| match r {
                Ok(fh) => reply.opened(FuseFh(fh.0), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdir(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FuseFh,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.readdir(&c, ino(i), FileHandle(fh.0), offset).await },
            move |r| match r {
                Ok(entries) => {
                    for e in entries {
                        let name = OsStr::from_bytes(&e.name);
                        if reply.add(node(e.ino), e.next_offset, convert::kind(e.kind), name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdirplus(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FuseFh,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        let ttl = self.timeouts.entry;
        self.run(
            async move { v.readdirplus(&c, ino(i), FileHandle(fh.0), offset).await },
            move |r| match r {
                Ok(entries) => {
                    for (e, a) in entries {
                        let name = OsStr::from_bytes(&e.name);
                        if reply.add(
                            node(e.ino),
                            e.next_offset,
                            name,
                            &ttl,
                            &attr(&a),
                            GENERATION,
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn releasedir(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FuseFh,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.releasedir(&c, FileHandle(fh.0)).await },
            reply_empty(reply),
        );
    }

    fn fsyncdir(&self, req: &Request, _i: INodeNo, fh: FuseFh, datasync: bool, reply: ReplyEmpty) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.fsync(&c, FileHandle(fh.0), datasync).await },
            reply_empty(reply),
        );
    }

    fn statfs(&self, req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(async move { v.statfs(&c).await }, move |r| match r {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match XattrMode::from_linux(flags) {
            Ok(mode) => mode,
            Err(e) => return reply.error(errno(&e)),
        };
        let (v, c, name, value) = (
            self.fs.clone(),
            self.caller(req),
            convert::name(name),
            value.to_vec(),
        );
        self.run(
            async move { v.setxattr(&c, ino(i), &name, &value, mode).await },
            reply_empty(reply),
        );
    }

    fn getxattr(&self, req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        self.run(
            async move { v.getxattr(&c, ino(i), &name).await },
            reply_xattr(reply, size),
        );
    }

    fn listxattr(&self, req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move {
                let names = v.listxattr(&c, ino(i)).await?;
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                Ok(out)
            },
            reply_xattr(reply, size),
        );
    }

    fn removexattr(&self, req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        self.run(
            async move { v.removexattr(&c, ino(i), &name).await },
            reply_empty(reply),
        );
    }

    fn access(&self, req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (v, c) = (self.fs.clone(), self.caller(req));
        let mask = mask.bits() as u32;
        self.run(
            async move { v.access(&c, ino(i), mask).await },
            reply_empty(reply),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (v, c, name) = (self.fs.clone(), self.caller(req), convert::name(name));
        let mode = mode & !(umask & 0o777);
        let ttl = self.timeouts.entry;
        self.run(
            async move {
                let (a, fh) = v.create(&c, ino(parent), &name, mode, flags).await?;
                Ok((a, fh, open_flags(v.as_ref(), fh)))
            },
            move |r| match r {
                Ok((a, fh, flags)) => {
                    reply.created(&ttl, &attr(&a), GENERATION, FuseFh(fh.0), flags)
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FuseFh,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mode = match FallocateMode::from_linux(mode) {
            Ok(mode) => mode,
            Err(e) => return reply.error(errno(&e)),
        };
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move {
                v.fallocate(&c, FileHandle(fh.0), offset, length, mode)
                    .await
            },
            reply_empty(reply),
        );
    }

    fn lseek(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FuseFh,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let whence = match Whence::from_linux(whence) {
            Ok(w) => w,
            Err(e) => return reply.error(errno(&e)),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(errno(&FsError::PastEnd));
        };
        let (v, c) = (self.fs.clone(), self.caller(req));
        self.run(
            async move { v.lseek(&c, FileHandle(fh.0), offset, whence).await },
            move |r| match r.and_then(|o| i64::try_from(o).map_err(|_| FsError::FileTooBig)) {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    // Requests the engine does not serve, each answered with its errno on purpose. No `ioctl`
    // is served: `ENOTTY` is what `isatty` and friends expect of a regular file.
    fn ioctl(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FuseFh,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno(&FsError::NoIoctl));
    }

    /// `ENOSYS` makes the kernel treat every file as always ready, and stop asking.
    fn poll(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FuseFh,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(errno(&FsError::NotServed("poll")));
    }

    /// `ENOSYS` makes the kernel copy through read and write itself, and stop asking.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FuseFh,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FuseFh,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(errno(&FsError::NotServed("copy_file_range")));
    }

    /// Block mapping exists only for filesystems on a block device (`fuseblk`).
    fn bmap(&self, _req: &Request, _i: INodeNo, _bs: u32, _idx: u64, reply: ReplyBmap) {
        reply.error(errno(&FsError::NotServed("bmap")));
    }

    /// POSIX locks are not negotiated with the kernel (it keeps them per mount itself), so these
    /// never arrive; if one does, `ENOSYS` is the protocol's "locks are local".
    fn getlk(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FuseFh,
        _owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        reply.error(errno(&FsError::NotServed("getlk")));
    }

    fn setlk(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FuseFh,
        _owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::NotServed("setlk")));
    }
}
