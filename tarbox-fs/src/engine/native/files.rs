//! Open files and directories of native mounts: open, create, read, write, fsync, fallocate,
//! lseek and listings, on descriptors the host gave the caller.
//!
//! A file is opened as the caller through `/proc/self/fd` of its resolved node (the host checks
//! the caller's rights then), and written as its opener, as through a descriptor of their own.
//! Data moves on the blocking pool: a disk may take its time. A directory is read whole at
//! `opendir` (its offsets are positions in that listing, stable for the handle's life).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, SeekFrom};

use super::host::{AsCaller, HostId, proc_path};
use super::native_ino;
use super::ops::{os, process_umask};
use crate::engine::audit::HandleStats;
use crate::engine::{Handle, Volume};
use crate::error::{FsError, FsResult};
use crate::types::{Caller, DirEntry, FallocateMode, FileAttr, FileHandle, FileType, Ino, Whence};

/// Entries a `readdir` call returns at most (a FUSE reply holds fewer).
const LISTING_PAGE: usize = 512;

/// What a handle of a native node holds open on the host.
#[derive(Debug)]
pub(in crate::engine) enum NativeOpen {
    File {
        file: Arc<std::fs::File>,
        /// Writes go where the host puts them (`O_APPEND` honoured by the host).
        write: bool,
        /// Who opened it: writes are made as them, as through a descriptor of their own (the
        /// kernel's writeback of a shared mapping arrives as root).
        opener: Caller,
    },
    Dir {
        /// The directory opened for reading (the caller's right to list it checked then).
        dir: OwnedFd,
        /// Its entries as read at `opendir`, `.` and `..` first; offsets are positions + 1.
        entries: Vec<DirEntry>,
    },
}

/// The `open(2)` flags a native open passes on: access mode, append, truncate, synchronous
/// writes; never anything that creates or outlives an `exec`. (`O_NOFOLLOW` is added where a
/// name is opened; a `/proc/self/fd` magic link must be followed to reach its file.)
fn open_flags(flags: i32) -> OFlags {
    let kept = libc::O_ACCMODE | libc::O_APPEND | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC;
    OFlags::from_bits_retain((flags & kept) as u32) | OFlags::CLOEXEC
}

fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Volume {
    pub(in crate::engine) fn native_open(
        &self,
        caller: &Caller,
        ino: Ino,
        flags: i32,
    ) -> FsResult<FileHandle> {
        let native = self.native_mounts()?;
        let (_, mount, node) = native.at(ino)?;
        if writes(flags) {
            native.writable(mount)?;
        }
        let fd = mount.resolve(node)?;
        match FileType::from_mode(rustix::fs::fstat(&fd).map_err(os)?.st_mode) {
            Some(FileType::Regular) => {}
            Some(FileType::Directory) if !writes(flags) => {}
            Some(FileType::Directory) => return Err(FsError::IsDir),
            // Special files are opened by the kernel, never through a filesystem.
            _ => return Err(FsError::PermissionDenied),
        }
        let file = {
            let _as = AsCaller::new(caller).map_err(os)?;
            rustix::fs::open(proc_path(&fd).as_c_str(), open_flags(flags), Mode::empty())
                .map_err(os)?
        };
        let file = Arc::new(std::fs::File::from(file));
        mount.host.opened(node, &file);
        Ok(self.native_handle(
            ino,
            NativeOpen::File {
                file,
                write: flags & libc::O_ACCMODE != libc::O_RDONLY,
                opener: caller.clone(),
            },
        ))
    }

    pub(in crate::engine) fn native_create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, FileHandle)> {
        let (index, mount, node) = self.native_parent(parent, name)?;
        self.native_mounts()?.writable(mount)?;
        let dir = mount.resolve(node)?;
        let file = {
            let _as = AsCaller::new(caller).map_err(os)?;
            let create = open_flags(flags) | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
            match rustix::fs::openat(&dir, name, create, Mode::from_raw_mode(mode & 0o7777)) {
                Ok(file) => {
                    // Made here: give it the mode asked for, whatever the process's umask.
                    if process_umask() & mode & 0o777 != 0 {
                        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777))
                            .map_err(os)?;
                    }
                    file
                }
                // Made by someone else since the kernel looked: open it, as O_CREAT does, if it
                // is a file (never a fifo or device, which could block or do anything).
                Err(rustix::io::Errno::EXIST) if flags & libc::O_EXCL == 0 => {
                    let what = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let fd = rustix::fs::openat(&dir, name, what, Mode::empty()).map_err(os)?;
                    match FileType::from_mode(rustix::fs::fstat(&fd).map_err(os)?.st_mode) {
                        Some(FileType::Regular) => {}
                        Some(FileType::Directory) => return Err(FsError::IsDir),
                        _ => return Err(FsError::Exists),
                    }
                    rustix::fs::open(proc_path(&fd).as_c_str(), open_flags(flags), Mode::empty())
                        .map_err(os)?
                }
                Err(e) => return Err(os(e)),
            }
        };
        let st = rustix::fs::fstat(&file).map_err(os)?;
        let child = mount.host.intern(node, name, HostId::of(&st));
        let ino = native_ino(index, child);
        let file = Arc::new(std::fs::File::from(file));
        mount.host.opened(child, &file);
        let fh = self.native_handle(
            ino,
            NativeOpen::File {
                file,
                write: flags & libc::O_ACCMODE != libc::O_RDONLY,
                opener: caller.clone(),
            },
        );
        Ok((mount.attr(ino, &st), fh))
    }

    fn native_handle(&self, ino: Ino, open: NativeOpen) -> FileHandle {
        self.new_handle(Handle::Native {
            ino,
            open: Arc::new(open),
            stats: Arc::new(HandleStats::default()),
        })
    }

    /// What a native handle holds open.
    pub(in crate::engine) fn native_file(&self, fh: FileHandle) -> FsResult<Arc<NativeOpen>> {
        Ok(self.native_handle_of(fh)?.1)
    }

    /// The node a native handle is open on, and what it holds open.
    fn native_handle_of(&self, fh: FileHandle) -> FsResult<(Ino, Arc<NativeOpen>)> {
        match self.handle(fh)? {
            Handle::Native { ino, open, .. } => Ok((ino, open)),
            _ => Err(FsError::BadHandle),
        }
    }

    pub(in crate::engine) async fn native_read(
        &self,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let open = self.native_file(fh)?;
        blocking(move || {
            let NativeOpen::File { file, .. } = &*open else {
                return Err(FsError::IsDir);
            };
            let mut buf = vec![0; size as usize];
            let mut filled = 0;
            while filled < buf.len() {
                match rustix::io::pread(file, &mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(os(e)),
                }
            }
            buf.truncate(filled);
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// Write as the file's opener: the host clears set-user-ID bits and applies quotas as for
    /// any process of theirs.
    pub(in crate::engine) async fn native_write(
        &self,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        let open = self.native_file(fh)?;
        let data = data.to_vec();
        blocking(move || {
            let NativeOpen::File {
                file,
                write,
                opener,
            } = &*open
            else {
                return Err(FsError::IsDir);
            };
            let _as = AsCaller::new(opener).map_err(os)?;
            if !write {
                return Err(FsError::BadHandle);
            }
            let mut done = 0;
            while done < data.len() {
                match rustix::io::pwrite(file, &data[done..], offset + done as u64) {
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) if done == 0 => return Err(os(e)),
                    Err(_) => break,
                }
            }
            Ok(done as u32)
        })
        .await
    }

    pub(in crate::engine) async fn native_fsync(
        &self,
        fh: FileHandle,
        datasync: bool,
    ) -> FsResult<()> {
        let open = self.native_file(fh)?;
        blocking(move || {
            let fd = match &*open {
                NativeOpen::File { file, .. } => file.as_fd(),
                NativeOpen::Dir { dir, .. } => dir.as_fd(),
            };
            if datasync {
                rustix::fs::fdatasync(fd).map_err(os)
            } else {
                rustix::fs::fsync(fd).map_err(os)
            }
        })
        .await
    }

    pub(in crate::engine) async fn native_fallocate(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: FallocateMode,
    ) -> FsResult<()> {
        let open = self.native_file(fh)?;
        let mut flags = FallocateFlags::empty();
        if mode.keep_size {
            flags |= FallocateFlags::KEEP_SIZE;
        }
        if mode.punch_hole {
            flags |= FallocateFlags::PUNCH_HOLE;
        }
        if mode.zero_range {
            flags |= FallocateFlags::ZERO_RANGE;
        }
        blocking(move || match &*open {
            NativeOpen::File { file, opener, .. } => {
                let _as = AsCaller::new(opener).map_err(os)?;
                rustix::fs::fallocate(file, flags, offset, length).map_err(os)
            }
            NativeOpen::Dir { .. } => Err(FsError::IsDir),
        })
        .await
    }

    pub(in crate::engine) fn native_lseek(
        &self,
        fh: FileHandle,
        offset: u64,
        whence: Whence,
    ) -> FsResult<u64> {
        let open = self.native_file(fh)?;
        let NativeOpen::File { file, .. } = &*open else {
            return Err(FsError::IsDir);
        };
        let pos = match whence {
            Whence::Data => SeekFrom::Data(offset),
            Whence::Hole => SeekFrom::Hole(offset),
        };
        // The descriptor's own position is never used for I/O (reads and writes say where).
        rustix::fs::seek(file, pos).map_err(os)
    }

    pub(in crate::engine) fn native_opendir(
        &self,
        caller: &Caller,
        ino: Ino,
    ) -> FsResult<FileHandle> {
        let native = self.native_mounts()?;
        let (index, mount, node) = native.at(ino)?;
        let fd = mount.resolve(node)?;
        let dir = {
            let _as = AsCaller::new(caller).map_err(os)?;
            rustix::fs::open(
                proc_path(&fd).as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(os)?
        };
        let dev = rustix::fs::fstat(&dir).map_err(os)?.st_dev;
        let parent = match native.name_of(ino) {
            Some((parent, _)) => parent,
            None => ino,
        };
        let mut entries = vec![
            DirEntry {
                name: b".".to_vec(),
                ino,
                kind: FileType::Directory,
                next_offset: 1,
            },
            DirEntry {
                name: b"..".to_vec(),
                ino: parent,
                kind: FileType::Directory,
                next_offset: 2,
            },
        ];
        let mut listing = rustix::fs::Dir::read_from(&dir).map_err(os)?;
        while let Some(entry) = listing.read() {
            let entry = entry.map_err(os)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            #[allow(clippy::unnecessary_cast)]
            let id = HostId::from_parts(dev as u64, entry.ino());
            let child = mount.host.intern(node, name, id);
            let next_offset = entries.len() as u64 + 1;
            entries.push(DirEntry {
                name: name.to_vec(),
                ino: native_ino(index, child),
                kind: kind_of(entry.file_type()),
                next_offset,
            });
        }
        Ok(self.native_handle(ino, NativeOpen::Dir { dir, entries }))
    }

    pub(in crate::engine) fn native_readdir(
        &self,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>> {
        let open = self.native_file(fh)?;
        let NativeOpen::Dir { entries, .. } = &*open else {
            return Err(FsError::NotDir);
        };
        Ok(entries
            .iter()
            .skip(offset as usize)
            .take(LISTING_PAGE)
            .cloned()
            .collect())
    }

    pub(in crate::engine) fn native_readdirplus(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        let (dir_ino, open) = self.native_handle_of(fh)?;
        let NativeOpen::Dir { dir, entries } = &*open else {
            return Err(FsError::NotDir);
        };
        let (index, mount, node) = self.native_mounts()?.at(dir_ino)?;
        let mut out = Vec::new();
        let _as = AsCaller::new(caller).map_err(os)?;
        for e in entries.iter().skip(offset as usize).take(LISTING_PAGE) {
            let st = if e.name == b"." {
                rustix::fs::fstat(dir)
            } else if e.name == b".." {
                continue;
            } else {
                rustix::fs::statat(dir, e.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            };
            match st {
                Ok(st) if e.name == b"." => out.push((e.clone(), mount.attr(e.ino, &st))),
                Ok(st) => {
                    // The kernel learns the node from this: the one the attributes are of.
                    let child =
                        native_ino(index, mount.host.intern(node, &e.name, HostId::of(&st)));
                    let entry = DirEntry {
                        ino: child,
                        ..e.clone()
                    };
                    out.push((entry, mount.attr(child, &st)));
                }
                // Removed since the listing was read.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(err) => return Err(os(err)),
            }
        }
        Ok(out)
    }
}

fn kind_of(kind: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as Host;
    match kind {
        Host::Directory => FileType::Directory,
        Host::Symlink => FileType::Symlink,
        Host::Fifo => FileType::Fifo,
        Host::Socket => FileType::Socket,
        Host::CharacterDevice => FileType::CharDevice,
        Host::BlockDevice => FileType::BlockDevice,
        _ => FileType::Regular,
    }
}

/// Run host I/O off the async threads: a disk may take its time.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> FsResult<T> + Send + 'static,
) -> FsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::Host(io::Error::other(e)))?
}
