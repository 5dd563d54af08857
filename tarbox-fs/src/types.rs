//! Value types shared by the engine, the backends and the frontends.
//!
//! Everything here is plain data: newtypes for identifiers so an inode number can never be passed
//! where a handle is expected, `FileType` as an enum rather than mode bits, and set-or-keep
//! structures for `setattr`. No type here knows about FUSE, gRPC or SQL.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{FsError, FsResult, QuotaKind};

/// An inode number, unique within one tenant and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory of every tenant.
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A tenant's number, fixed for its life and never reused. Frontends address tenants by name;
/// a CSI volume id is this number, since DeleteVolume carries nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TenantId(pub i64);

/// A layer's identifier. Ids grow monotonically within a store, so along any chain from a layer to
/// the base a child always has a larger id than its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LayerId(pub i64);

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An open file or directory handle issued by a [`crate::Volume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle(pub u64);

/// The kind of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileType {
    /// The `S_IFMT` bits of this type.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => libc::S_IFREG,
            FileType::Directory => libc::S_IFDIR,
            FileType::Symlink => libc::S_IFLNK,
            FileType::CharDevice => libc::S_IFCHR,
            FileType::BlockDevice => libc::S_IFBLK,
            FileType::Fifo => libc::S_IFIFO,
            FileType::Socket => libc::S_IFSOCK,
        }
    }

    /// The type named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::Regular,
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFSOCK => FileType::Socket,
            _ => return None,
        })
    }

    /// Compact code used by storage backends.
    pub fn code(self) -> i16 {
        match self {
            FileType::Regular => 1,
            FileType::Directory => 2,
            FileType::Symlink => 3,
            FileType::CharDevice => 4,
            FileType::BlockDevice => 5,
            FileType::Fifo => 6,
            FileType::Socket => 7,
        }
    }

    /// Inverse of [`FileType::code`].
    pub fn from_code(code: i16) -> Option<FileType> {
        Some(match code {
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::Symlink,
            4 => FileType::CharDevice,
            5 => FileType::BlockDevice,
            6 => FileType::Fifo,
            7 => FileType::Socket,
            _ => return None,
        })
    }
}

/// A point in time with nanosecond precision, as nanoseconds since the Unix epoch (may be negative).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.0.unsigned_abs())
        }
    }

    /// UTC time to the second, RFC 3339 (`2026-11-22T10:30:00Z`).
    pub fn to_rfc3339(self) -> String {
        match jiff::Timestamp::from_nanosecond(i128::from(self.0)) {
            Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            Err(_) => format!("@{}ns", self.0),
        }
    }

    /// Whole seconds and the nanosecond remainder, as `struct timespec` holds them.
    pub fn secs_nanos(self) -> (i64, u32) {
        (
            self.0.div_euclid(1_000_000_000),
            self.0.rem_euclid(1_000_000_000) as u32,
        )
    }
}

/// Source of the current time. Library code never reads the system clock directly, so tests can
/// inject a clock.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // The one place the wall clock is read (clippy.toml bans it elsewhere).
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now();
        Timestamp::from_system(now)
    }
}

/// One stored version of an inode: what `stat` shows plus what the engine needs to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: Ino,
    pub kind: FileType,
    /// Permission bits including suid, sgid and sticky (`0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub btime: Timestamp,
    pub rdev: u32,
    /// The containing directory of a directory (its `..`); for other kinds the directory of its
    /// most recent name, a hint for diffs and diagnostics (a hard-linked file may have other
    /// names elsewhere, and this one may be gone).
    pub parent: Ino,
    /// The target of a symlink; empty for other kinds.
    pub target: Vec<u8>,
}

impl Inode {
    /// `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }

    /// What the inode counts against its tenant's byte quota: its size rounded up to 4 KiB.
    pub fn charged_bytes(&self) -> u64 {
        self.size.div_ceil(4096).saturating_mul(4096)
    }
}

/// Attributes as a frontend reports them to a caller (`struct stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAttr {
    pub ino: Ino,
    pub kind: FileType,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte units, as `st_blocks`.
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub btime: Timestamp,
    pub rdev: u32,
}

impl FileAttr {
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }
}

/// A timestamp assignment in `setattr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The engine's current time (`UTIME_NOW`); permitted to anyone with write access.
    Now,
    /// An explicit time; permitted to the owner only.
    At(Timestamp),
}

/// A `setattr` request: every field is "set to this" or `None` for "keep".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (type bits are ignored).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// An explicit ctime; only honoured for callers with `CAP_FOWNER` semantics (root).
    pub ctime: Option<Timestamp>,
    /// The handle the change is made through (`ftruncate`), if any: a handle opened for writing
    /// permits truncation even if the mode no longer does.
    pub handle: Option<FileHandle>,
}

/// Kubernetes identity of a caller, filled in by the CSI driver when it knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// Who performs an operation. Every engine call takes one; frontends build it from their protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub pid: u32,
    pub pod: Option<Arc<PodIdentity>>,
}

impl Caller {
    /// This process, by its effective uid and gid: the caller of a command-line tool's changes.
    pub fn this_process() -> Caller {
        use std::os::unix::fs::MetadataExt;
        // `/proc/self` is owned by the process's effective ids.
        let (uid, gid) = std::fs::metadata("/proc/self").map_or((0, 0), |m| (m.uid(), m.gid()));
        Caller {
            uid,
            gid,
            pid: std::process::id(),
            ..Caller::default()
        }
    }

    /// The superuser, as used by administrative tools.
    pub fn root() -> Caller {
        Caller::default()
    }

    pub fn new(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            ..Caller::default()
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller belongs to `gid` as primary or supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// `rename` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenameFlags {
    /// `RENAME_NOREPLACE`: fail with `EEXIST` if the target exists.
    pub no_replace: bool,
    /// `RENAME_EXCHANGE`: atomically swap source and target, both of which must exist.
    pub exchange: bool,
}

impl RenameFlags {
    /// Decode Linux `renameat2` flags; unknown bits (e.g. `RENAME_WHITEOUT`) are `EINVAL`.
    pub fn from_linux(flags: u32) -> FsResult<RenameFlags> {
        const NOREPLACE: u32 = 1;
        const EXCHANGE: u32 = 2;
        if flags & !(NOREPLACE | EXCHANGE) != 0 {
            return Err(FsError::Invalid("unsupported rename flags"));
        }
        Ok(RenameFlags {
            no_replace: flags & NOREPLACE != 0,
            exchange: flags & EXCHANGE != 0,
        })
    }
}

/// `setxattr` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// `XATTR_CREATE`: fail with `EEXIST` if present.
    Create,
    /// `XATTR_REPLACE`: fail with `ENODATA` if absent.
    Replace,
}

impl XattrMode {
    /// Decode Linux `setxattr` flags; anything but one of the two flags is `EINVAL`.
    pub fn from_linux(flags: i32) -> FsResult<XattrMode> {
        match flags {
            0 => Ok(XattrMode::Any),
            libc::XATTR_CREATE => Ok(XattrMode::Create),
            libc::XATTR_REPLACE => Ok(XattrMode::Replace),
            _ => Err(FsError::Invalid("unsupported setxattr flags")),
        }
    }
}

/// What `lseek` looks for; the kernel answers `SEEK_SET`, `SEEK_CUR` and `SEEK_END` itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    /// `SEEK_DATA`: the first byte at or after the offset that holds data.
    Data,
    /// `SEEK_HOLE`: the first byte at or after the offset in a hole (end of file counts).
    Hole,
}

impl Whence {
    /// Decode an `lseek` whence a filesystem is asked; others are `EINVAL`.
    pub fn from_linux(whence: i32) -> FsResult<Whence> {
        match whence {
            libc::SEEK_DATA => Ok(Whence::Data),
            libc::SEEK_HOLE => Ok(Whence::Hole),
            _ => Err(FsError::Invalid(
                "lseek whence other than SEEK_DATA or SEEK_HOLE",
            )),
        }
    }
}

/// `fallocate` modes the engine supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallocateMode {
    /// `FALLOC_FL_KEEP_SIZE`: do not change the file size.
    pub keep_size: bool,
    /// `FALLOC_FL_PUNCH_HOLE` (requires `keep_size`): zero the range and release its blocks.
    pub punch_hole: bool,
    /// `FALLOC_FL_ZERO_RANGE`: zero the range.
    pub zero_range: bool,
}

impl FallocateMode {
    /// Decode Linux `fallocate` mode bits; unsupported bits are `EOPNOTSUPP`.
    pub fn from_linux(mode: i32) -> FsResult<FallocateMode> {
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return Err(FsError::NotSupported("fallocate mode"));
        }
        Ok(FallocateMode {
            keep_size: mode & libc::FALLOC_FL_KEEP_SIZE != 0,
            punch_hole: mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
            zero_range: mode & libc::FALLOC_FL_ZERO_RANGE != 0,
        })
    }
}

/// One directory entry as `readdir` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileType,
    /// The offset to pass to the next `readdir` call to continue after this entry.
    pub next_offset: u64,
}

/// `statfs` results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// Byte and inode limits of a tenant; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quota {
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
}

impl Quota {
    /// The limit that charging `bytes` and `inodes` more to `usage` would pass, if any: the one
    /// quota rule, which every backend applies in its compare-and-charge. Only growth is ever
    /// refused; a limit already passed (a quota lowered below usage) refuses any further growth.
    pub fn exceeded_by(&self, usage: Usage, bytes: i64, inodes: i64) -> Option<QuotaKind> {
        let passes = |delta: i64, used: u64, limit: Option<u64>| {
            delta > 0 && limit.is_some_and(|l| used.saturating_add_signed(delta) > l)
        };
        if passes(bytes, usage.bytes, self.bytes) {
            Some(QuotaKind::Bytes)
        } else if passes(inodes, usage.inodes, self.inodes) {
            Some(QuotaKind::Inodes)
        } else {
            None
        }
    }
}

/// What a tenant uses, as counted against its [`Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}
