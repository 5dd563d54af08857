//! Every conversion between fuser types and engine types. fuser changes its API between minor
//! releases, so no other module (and no other crate) touches its types.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use fuser::{Errno, INodeNo, Request, TimeOrNow};
use moka::sync::Cache;
use tarbox_fs::{Caller, FileAttr, FileType, FsError, Ino, PodIdentity, TimeSet, Timestamp};

use crate::PodResolver;

pub(crate) fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

pub(crate) fn node(i: Ino) -> INodeNo {
    INodeNo(i.0)
}

pub(crate) fn name(n: &OsStr) -> Vec<u8> {
    n.as_bytes().to_vec()
}

pub(crate) fn errno(e: &FsError) -> Errno {
    let n = e.errno();
    // The program sees only EIO; the log keeps why (a store down, a corrupt block, ...).
    if n == libc::EIO {
        tracing::warn!(error = %e, "replying EIO");
    }
    Errno::from_i32(n)
}

pub(crate) fn kind(k: FileType) -> fuser::FileType {
    match k {
        FileType::Regular => fuser::FileType::RegularFile,
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
    }
}

pub(crate) fn attr(a: &FileAttr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: node(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.to_system(),
        mtime: a.mtime.to_system(),
        ctime: a.ctime.to_system(),
        crtime: a.btime.to_system(),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

pub(crate) fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from_system(t)),
    }
}

pub(crate) fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from_system(t)
}

/// Who a request comes from. The FUSE protocol carries only uid, gid and pid; the supplementary
/// groups come from `/proc/<pid>/status` and the pod (if the mount has a [`PodResolver`]) from
/// the resolver, both cached briefly per process because a process asks many times in a row.
pub(crate) struct GroupCache {
    cache: Cache<(u32, u32, u32), Arc<Identity>>,
    pods: Option<Arc<dyn PodResolver>>,
}

/// What is looked up once per process.
struct Identity {
    groups: Vec<u32>,
    pod: Option<Arc<PodIdentity>>,
}

impl GroupCache {
    pub(crate) fn new(pods: Option<Arc<dyn PodResolver>>) -> GroupCache {
        GroupCache {
            cache: Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(2))
                .build(),
            pods,
        }
    }

    /// The engine caller for a FUSE request.
    pub(crate) fn caller(&self, req: &Request) -> Caller {
        let (uid, gid, pid) = (req.uid(), req.gid(), req.pid());
        if uid == 0 && self.pods.is_none() {
            return Caller {
                uid,
                gid,
                groups: Vec::new(),
                pid,
                pod: None,
            };
        }
        let identity = self.cache.get_with((pid, uid, gid), || {
            Arc::new(Identity {
                // Root passes every permission check: its groups are never needed.
                groups: if uid == 0 { Vec::new() } else { groups_of(pid) },
                pod: self.pods.as_ref().and_then(|p| p.pod_of(pid)),
            })
        });
        Caller {
            uid,
            gid,
            groups: identity.groups.clone(),
            pid,
            pod: identity.pod.clone(),
        }
    }
}

/// The `Groups:` line of `/proc/<pid>/status`; empty if the process is gone.
fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
