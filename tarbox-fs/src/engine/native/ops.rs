//! The operations on native nodes by name and attribute (lookup, create, remove, link, rename,
//! attributes, xattrs, access), each one as host calls on the mount's source directory; open
//! files and listings are in `files.rs`.
//!
//! `api.rs` sends an operation here when it names a native node or a mount point, inside the
//! same [`Volume::audited`] as every other operation. Each one resolves its nodes beneath the
//! source (`host.rs`), refuses changes on a read-only mount with `EROFS`, and makes the host call
//! as the caller, so the host applies its own permission rules; errors are the host's errno.
//!
//! Special files: a native mount never creates device nodes (`EPERM`): the host directory is
//! shared with the host, where a tenant's device node would be a door into the machine. Fifos
//! and sockets are created; opening any of them never reaches the engine (the kernel does it).
//! Only `user.` extended attributes can be set or removed (`EPERM` for the others: `trusted.`
//! and `security.` ones would change what the host trusts).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use rustix::fs::{
    Access, AtFlags, CWD, Mode, OFlags, RenameFlags as HostRename, Stat, Timespec, Timestamps,
    XattrFlags,
};

use super::files::NativeOpen;
use super::host::{AsCaller, HostId, ROOT_NODE, child_name, proc_path, stat_child};
use super::{Mounted, NativeMounts, native_ino};
use crate::engine::Volume;
use crate::engine::namespace::Renamed;
use crate::error::{FsError, FsResult};
use crate::native::NativeMode;
use crate::types::{
    Caller, FileAttr, FileType, Ino, RenameFlags, SetAttr, TimeSet, Timestamp, XattrMode,
};

pub(super) fn os(e: impl Into<io::Error>) -> FsError {
    FsError::Host(e.into())
}

fn ts(secs: i64, nanos: i64) -> Timestamp {
    Timestamp(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Attributes as the host reports them, under the node's own inode number.
#[allow(clippy::unnecessary_cast)] // Stat's field types differ between targets.
fn attr_of(ino: Ino, st: &Stat) -> FileAttr {
    let ctime = ts(st.st_ctime as i64, st.st_ctime_nsec as i64);
    FileAttr {
        ino,
        kind: FileType::from_mode(st.st_mode as u32).unwrap_or(FileType::Regular),
        perm: (st.st_mode as u32 & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size.max(0) as u64,
        blocks: st.st_blocks as u64,
        blksize: st.st_blksize as u32,
        atime: ts(st.st_atime as i64, st.st_atime_nsec as i64),
        mtime: ts(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime,
        btime: ctime,
        rdev: st.st_rdev as u32,
    }
}

/// The process's umask: what the host strips from the modes of new files, put back after.
pub(super) fn process_umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

impl NativeMounts {
    /// The mount and node of `ino`, `ESTALE` if it is not a node of this volume's mounts.
    pub(super) fn at(&self, ino: Ino) -> FsResult<(usize, &Mounted, u64)> {
        self.node(ino)
            .ok_or(FsError::Host(io::Error::from_raw_os_error(libc::ESTALE)))
    }

    /// `EROFS` if `mount` takes no changes.
    pub(super) fn writable(&self, mount: &Mounted) -> FsResult<()> {
        if self.read_only || mount.mode == NativeMode::Ro {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }
}

impl Mounted {
    pub(super) fn resolve(&self, node: u64) -> FsResult<OwnedFd> {
        self.host.resolve(node).map_err(os)
    }

    /// The attributes of `name` just made or changed in `dir`, as a node.
    fn child_attr(
        &self,
        index: usize,
        dir_node: u64,
        dir: &OwnedFd,
        name: &[u8],
    ) -> FsResult<FileAttr> {
        let st = stat_child(dir, name).map_err(os)?;
        let node = self.host.intern(dir_node, name, HostId::of(&st));
        Ok(self.attr(native_ino(index, node), &st))
    }

    /// Give back to a new object the permission bits the process's umask took from the mode
    /// asked for (the caller's own umask was applied by the kernel already); the rest of its
    /// mode, such as a set-group-ID inherited from its directory, stays as the host made it.
    fn restore_mode(&self, dir: &OwnedFd, name: &[u8], mode: u32) -> FsResult<()> {
        let stripped = process_umask() & mode & 0o777;
        if stripped == 0 {
            return Ok(());
        }
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(os)?;
        let now = rustix::fs::fstat(&fd).map_err(os)?.st_mode & 0o7777;
        rustix::fs::chmod(
            proc_path(&fd).as_c_str(),
            Mode::from_raw_mode(now | stripped),
        )
        .map_err(os)
    }

    /// Attributes of one of this mount's nodes. A read-only mount shows no set-user-ID or
    /// set-group-ID bit on files: the host's privileged programs (`su` in a shared `/usr`) must
    /// not gain anyone privileges through the mount.
    pub(super) fn attr(&self, ino: Ino, st: &Stat) -> FileAttr {
        let mut attr = attr_of(ino, st);
        if self.mode == NativeMode::Ro && attr.kind == FileType::Regular {
            attr.perm &= !0o6000;
        }
        attr
    }
}

impl Volume {
    pub(super) fn native_mounts(&self) -> FsResult<&NativeMounts> {
        self.native().ok_or(FsError::BadHandle)
    }

    /// The attributes of the root of mount `index`.
    fn native_root_attr(&self, index: usize, mount: &Mounted) -> FsResult<FileAttr> {
        let fd = mount.resolve(ROOT_NODE)?;
        let st = rustix::fs::fstat(&fd).map_err(os)?;
        Ok(mount.attr(native_ino(index, ROOT_NODE), &st))
    }

    /// A directory of a native mount that a new name is made in, or `EEXIST` for a mount point
    /// (its name is taken).
    pub(super) fn native_parent(
        &self,
        parent: Ino,
        name: &[u8],
    ) -> FsResult<(usize, &Mounted, u64)> {
        let native = self.native_mounts()?;
        if !native.owns(parent) {
            return Err(FsError::Exists);
        }
        child_name(name).map_err(os)?;
        native.at(parent)
    }

    pub(in crate::engine) async fn native_lookup(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
    ) -> FsResult<FileAttr> {
        let native = self.native_mounts()?;
        if let Some((index, mount)) = native.mount_point(parent, name) {
            // The directory of the tree holding the mount point is searched as any other.
            self.do_access(caller, parent, libc::X_OK as u32).await?;
            return self.native_root_attr(index, mount);
        }
        let (index, mount, node) = native.at(parent)?;
        let name = child_name(name).map_err(os)?;
        let dir = mount.resolve(node)?;
        let st = {
            let _as = AsCaller::new(caller).map_err(os)?;
            stat_child(&dir, name).map_err(os)?
        };
        // A filesystem mounted below the source is not entered.
        if st.st_dev != rustix::fs::fstat(&dir).map_err(os)?.st_dev {
            return Err(FsError::CrossDevice);
        }
        let child = mount.host.intern(node, name, HostId::of(&st));
        Ok(mount.attr(native_ino(index, child), &st))
    }

    pub(in crate::engine) fn native_getattr(&self, ino: Ino) -> FsResult<FileAttr> {
        let (_, mount, node) = self.native_mounts()?.at(ino)?;
        let fd = mount.resolve(node)?;
        let st = rustix::fs::fstat(&fd).map_err(os)?;
        Ok(mount.attr(ino, &st))
    }

    pub(in crate::engine) fn native_setattr(
        &self,
        caller: &Caller,
        ino: Ino,
        set: &SetAttr,
    ) -> FsResult<FileAttr> {
        let native = self.native_mounts()?;
        let (_, mount, node) = native.at(ino)?;
        native.writable(mount)?;
        let fd = mount.resolve(node)?;
        let st = rustix::fs::fstat(&fd).map_err(os)?;
        let kind = FileType::from_mode(st.st_mode);
        let symlink = kind == Some(FileType::Symlink);
        // Refused before anything changes.
        if symlink && set.mode.is_some() {
            return Err(FsError::NotSupported("the mode of a symlink"));
        }
        if set.size.is_some() && kind != Some(FileType::Regular) {
            return Err(match kind {
                Some(FileType::Directory) => FsError::IsDir,
                _ => FsError::Invalid("truncate of a special file"),
            });
        }
        let path = proc_path(&fd);
        let _as = AsCaller::new(caller).map_err(os)?;
        if set.uid.is_some() || set.gid.is_some() {
            rustix::fs::chownat(
                &fd,
                c"",
                set.uid.map(rustix::fs::Uid::from_raw_unchecked),
                set.gid.map(rustix::fs::Gid::from_raw_unchecked),
                AtFlags::EMPTY_PATH,
            )
            .map_err(os)?;
        }
        if let Some(mode) = set.mode {
            rustix::fs::chmod(path.as_c_str(), Mode::from_raw_mode(mode & 0o7777)).map_err(os)?;
        }
        if let Some(size) = set.size {
            let through = set.handle.and_then(|fh| self.native_file(fh).ok());
            match through {
                // Truncating through a handle open for writing needs no write permission now.
                Some(open) => match &*open {
                    NativeOpen::File { file, .. } => {
                        rustix::fs::ftruncate(file, size).map_err(os)?
                    }
                    NativeOpen::Dir { .. } => return Err(FsError::IsDir),
                },
                None => {
                    let file = rustix::fs::open(
                        path.as_c_str(),
                        OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(os)?;
                    rustix::fs::ftruncate(&file, size).map_err(os)?;
                }
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let spec = |t: Option<TimeSet>| match t {
                None => Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                Some(TimeSet::Now) => Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
                Some(TimeSet::At(t)) => {
                    let (secs, nanos) = t.secs_nanos();
                    Timespec {
                        tv_sec: secs,
                        tv_nsec: nanos.into(),
                    }
                }
            };
            let times = Timestamps {
                last_access: spec(set.atime),
                last_modification: spec(set.mtime),
            };
            if symlink {
                // The symlink itself, through its directory (no magic link reaches a symlink).
                let (parent, name) = mount
                    .host
                    .first_name(node)
                    .ok_or(FsError::Host(io::Error::from_raw_os_error(libc::ESTALE)))?;
                let dir = mount.resolve(parent)?;
                rustix::fs::utimensat(&dir, &*name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(os)?;
            } else {
                rustix::fs::utimensat(CWD, path.as_c_str(), &times, AtFlags::empty())
                    .map_err(os)?;
            }
        }
        let st = rustix::fs::fstat(&fd).map_err(os)?;
        Ok(mount.attr(ino, &st))
    }

    pub(in crate::engine) fn native_mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        let (index, mount, node) = self.native_parent(parent, name)?;
        self.native_mounts()?.writable(mount)?;
        let kind = match FileType::from_mode(mode) {
            Some(FileType::Regular) | None => rustix::fs::FileType::RegularFile,
            Some(FileType::Fifo) => rustix::fs::FileType::Fifo,
            Some(FileType::Socket) => rustix::fs::FileType::Socket,
            Some(FileType::CharDevice | FileType::BlockDevice) => {
                return Err(FsError::NotPermitted);
            }
            Some(FileType::Directory | FileType::Symlink) => {
                return Err(FsError::Invalid("mknod of a directory or symlink"));
            }
        };
        let dir = mount.resolve(node)?;
        {
            let _as = AsCaller::new(caller).map_err(os)?;
            rustix::fs::mknodat(
                &dir,
                name,
                kind,
                Mode::from_raw_mode(mode & 0o7777),
                u64::from(rdev),
            )
            .map_err(os)?;
            mount.restore_mode(&dir, name, mode)?;
        }
        mount.child_attr(index, node, &dir, name)
    }

    pub(in crate::engine) fn native_mkdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<FileAttr> {
        let (index, mount, node) = self.native_parent(parent, name)?;
        self.native_mounts()?.writable(mount)?;
        let dir = mount.resolve(node)?;
        {
            let _as = AsCaller::new(caller).map_err(os)?;
            rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & 0o7777)).map_err(os)?;
            mount.restore_mode(&dir, name, mode)?;
        }
        mount.child_attr(index, node, &dir, name)
    }

    pub(in crate::engine) fn native_symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<FileAttr> {
        let (index, mount, node) = self.native_parent(parent, name)?;
        self.native_mounts()?.writable(mount)?;
        let dir = mount.resolve(node)?;
        {
            let _as = AsCaller::new(caller).map_err(os)?;
            // Stored as given and never followed by the engine.
            rustix::fs::symlinkat(target, &dir, name).map_err(os)?;
        }
        mount.child_attr(index, node, &dir, name)
    }

    pub(in crate::engine) fn native_readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let (_, mount, node) = self.native_mounts()?.at(ino)?;
        let fd = mount.resolve(node)?;
        Ok(rustix::fs::readlinkat(&fd, c"", Vec::new())
            .map_err(os)?
            .into_bytes())
    }

    /// A hard link within one mount; across the boundary `EXDEV` (decided in `api.rs`).
    pub(in crate::engine) fn native_link(
        &self,
        caller: &Caller,
        ino: Ino,
        newparent: Ino,
        newname: &[u8],
    ) -> FsResult<FileAttr> {
        let native = self.native_mounts()?;
        if native.mount_point(newparent, newname).is_some() {
            return Err(FsError::Exists);
        }
        let (Some((index, mount, node)), Some((new_index, _, new_node))) =
            (native.node(ino), native.node(newparent))
        else {
            return Err(FsError::CrossDevice);
        };
        if new_index != index {
            return Err(FsError::CrossDevice);
        }
        child_name(newname).map_err(os)?;
        native.writable(mount)?;
        let fd = mount.resolve(node)?;
        if FileType::from_mode(rustix::fs::fstat(&fd).map_err(os)?.st_mode)
            == Some(FileType::Directory)
        {
            return Err(FsError::NotPermitted);
        }
        let dir = mount.resolve(new_node)?;
        {
            let _as = AsCaller::new(caller).map_err(os)?;
            rustix::fs::linkat(
                CWD,
                proc_path(&fd).as_c_str(),
                &dir,
                newname,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(os)?;
        }
        mount.child_attr(index, new_node, &dir, newname)
    }

    /// Remove `name` (a directory with `rmdir`); returns the inode it named.
    pub(in crate::engine) fn native_remove(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        rmdir: bool,
    ) -> FsResult<Ino> {
        let native = self.native_mounts()?;
        if !native.owns(parent) {
            // The mount point itself.
            return Err(if rmdir {
                FsError::Busy("a native mount point")
            } else {
                FsError::IsDir
            });
        }
        let (index, mount, node) = native.at(parent)?;
        child_name(name).map_err(os)?;
        native.writable(mount)?;
        let dir = mount.resolve(node)?;
        let st = stat_child(&dir, name).map_err(os)?;
        let removed = mount.host.intern(node, name, HostId::of(&st));
        {
            let _as = AsCaller::new(caller).map_err(os)?;
            let flags = if rmdir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            rustix::fs::unlinkat(&dir, name, flags).map_err(os)?;
        }
        mount.host.unname(node, name);
        Ok(native_ino(index, removed))
    }

    /// A rename within one mount; across the boundary `EXDEV`, of a mount point `EBUSY`.
    pub(in crate::engine) fn native_rename(
        &self,
        caller: &Caller,
        (parent, name): (Ino, &[u8]),
        (newparent, newname): (Ino, &[u8]),
        flags: RenameFlags,
    ) -> FsResult<Renamed> {
        let native = self.native_mounts()?;
        if native.mount_point(parent, name).is_some()
            || native.mount_point(newparent, newname).is_some()
        {
            return Err(FsError::Busy("a native mount point"));
        }
        let (Some((index, mount, node)), Some((new_index, _, new_node))) =
            (native.node(parent), native.node(newparent))
        else {
            return Err(FsError::CrossDevice);
        };
        if index != new_index {
            return Err(FsError::CrossDevice);
        }
        child_name(name).map_err(os)?;
        child_name(newname).map_err(os)?;
        native.writable(mount)?;
        let dir = mount.resolve(node)?;
        let new_dir = mount.resolve(new_node)?;
        let mut host_flags = HostRename::empty();
        if flags.no_replace {
            host_flags |= HostRename::NOREPLACE;
        }
        if flags.exchange {
            host_flags |= HostRename::EXCHANGE;
        }
        {
            let _as = AsCaller::new(caller).map_err(os)?;
            rustix::fs::renameat_with(&dir, name, &new_dir, newname, host_flags).map_err(os)?;
        }
        mount
            .host
            .renamed((node, name), (new_node, newname), flags.exchange);
        let moved = mount.child_attr(index, new_node, &new_dir, newname)?.ino;
        let exchanged = if flags.exchange {
            Some(mount.child_attr(index, node, &dir, name)?.ino)
        } else {
            None
        };
        Ok(Renamed { moved, exchanged })
    }

    /// A native node as `/proc/self/fd/N` for the path-based calls (xattrs, access), unless it
    /// is a symlink (no magic link reaches one).
    fn native_proc(&self, ino: Ino) -> FsResult<(OwnedFd, Option<std::ffi::CString>, &Mounted)> {
        let (_, mount, node) = self.native_mounts()?.at(ino)?;
        let fd = mount.resolve(node)?;
        let st = rustix::fs::fstat(&fd).map_err(os)?;
        let path =
            (FileType::from_mode(st.st_mode) != Some(FileType::Symlink)).then(|| proc_path(&fd));
        Ok((fd, path, mount))
    }

    pub(in crate::engine) fn native_getxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
    ) -> FsResult<Vec<u8>> {
        let (_fd, path, _) = self.native_proc(ino)?;
        let Some(path) = path else {
            return Err(FsError::NoData);
        };
        let _as = AsCaller::new(caller).map_err(os)?;
        loop {
            let size = rustix::fs::getxattr_query(path.as_c_str(), name).map_err(os)?;
            let mut buf = vec![0; size];
            match rustix::fs::getxattr(path.as_c_str(), name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // Grew in between.
                Err(rustix::io::Errno::RANGE) => continue,
                Err(e) => return Err(os(e)),
            }
        }
    }

    pub(in crate::engine) fn native_listxattr(
        &self,
        caller: &Caller,
        ino: Ino,
    ) -> FsResult<Vec<Vec<u8>>> {
        let (_fd, path, _) = self.native_proc(ino)?;
        let Some(path) = path else {
            return Ok(Vec::new());
        };
        let _as = AsCaller::new(caller).map_err(os)?;
        loop {
            let size = rustix::fs::listxattr_query(path.as_c_str()).map_err(os)?;
            let mut buf = vec![0; size];
            match rustix::fs::listxattr(path.as_c_str(), &mut buf[..]) {
                Ok(n) => {
                    return Ok(buf[..n]
                        .split(|b| *b == 0)
                        .filter(|n| !n.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect());
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(e) => return Err(os(e)),
            }
        }
    }

    /// Set (`Some(value)`) or remove (`None`) a `user.` attribute.
    pub(in crate::engine) fn native_set_xattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: Option<(&[u8], XattrMode)>,
    ) -> FsResult<()> {
        let (_fd, path, mount) = self.native_proc(ino)?;
        self.native_mounts()?.writable(mount)?;
        let (Some(path), true) = (path, name.starts_with(b"user.")) else {
            return Err(FsError::NotPermitted);
        };
        let _as = AsCaller::new(caller).map_err(os)?;
        match value {
            Some((value, mode)) => {
                let flags = match mode {
                    XattrMode::Any => XattrFlags::empty(),
                    XattrMode::Create => XattrFlags::CREATE,
                    XattrMode::Replace => XattrFlags::REPLACE,
                };
                rustix::fs::setxattr(path.as_c_str(), name, value, flags).map_err(os)
            }
            None => rustix::fs::removexattr(path.as_c_str(), name).map_err(os),
        }
    }

    pub(in crate::engine) fn native_access(
        &self,
        caller: &Caller,
        ino: Ino,
        mask: u32,
    ) -> FsResult<()> {
        let native = self.native_mounts()?;
        let (_, mount, node) = native.at(ino)?;
        if mask & libc::W_OK as u32 != 0 {
            native.writable(mount)?;
        }
        let fd = mount.resolve(node)?;
        let access = Access::from_bits_truncate(mask);
        let _as = AsCaller::new(caller).map_err(os)?;
        // As the caller's filesystem identity (AT_EACCESS), the one the host would check.
        rustix::fs::accessat(CWD, proc_path(&fd).as_c_str(), access, AtFlags::EACCESS).map_err(os)
    }
}
