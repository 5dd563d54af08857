//! POSIX permission checks: owner/group/other classes, supplementary groups, root's bypass and
//! the sticky-directory rule.

use crate::error::{FsError, FsResult};
use crate::types::{Caller, FileType, Inode};

pub(crate) const R: u16 = 4;
pub(crate) const W: u16 = 2;
pub(crate) const X: u16 = 1;

/// Whether `caller` may access `inode` with `mask` (a combination of [`R`], [`W`], [`X`]).
///
/// Root may do anything except execute a non-directory that has no execute bit at all. Otherwise
/// exactly one class applies: owner if the uid matches, else group if the caller is a member
/// (primary or supplementary), else other — a more restrictive owner class is not widened by the
/// group or other bits.
pub(crate) fn allowed(caller: &Caller, inode: &Inode, mask: u16) -> bool {
    if caller.is_root() {
        if mask & X != 0 && inode.kind != FileType::Directory {
            return inode.perm & 0o111 != 0;
        }
        return true;
    }
    let bits = if caller.uid == inode.uid {
        (inode.perm >> 6) & 7
    } else if caller.in_group(inode.gid) {
        (inode.perm >> 3) & 7
    } else {
        inode.perm & 7
    };
    bits & mask == mask
}

/// [`allowed`], as `EACCES`.
pub(crate) fn check(caller: &Caller, inode: &Inode, mask: u16) -> FsResult<()> {
    if allowed(caller, inode, mask) {
        Ok(())
    } else {
        Err(FsError::PermissionDenied)
    }
}

/// Search permission on a directory (`EACCES`), after checking it is one (`ENOTDIR`).
pub(crate) fn check_search(caller: &Caller, dir: &Inode) -> FsResult<()> {
    if dir.kind != FileType::Directory {
        return Err(FsError::NotDir);
    }
    check(caller, dir, X)
}

/// Permission to add or remove entries of `dir`: write and search.
pub(crate) fn check_modify_dir(caller: &Caller, dir: &Inode) -> FsResult<()> {
    if dir.kind != FileType::Directory {
        return Err(FsError::NotDir);
    }
    check(caller, dir, W | X)
}

/// The sticky-directory rule: in a directory with the sticky bit, only the owner of the entry, the
/// owner of the directory, or root may remove or rename it (`EPERM`).
pub(crate) fn check_sticky(caller: &Caller, dir: &Inode, victim: &Inode) -> FsResult<()> {
    if dir.perm & libc::S_ISVTX as u16 != 0
        && !caller.is_root()
        && caller.uid != dir.uid
        && caller.uid != victim.uid
    {
        return Err(FsError::NotPermitted);
    }
    Ok(())
}

/// Whether the caller owns the inode or is root (required by chmod, utimes with explicit times,
/// and xattrs in the trusted/security namespaces).
pub(crate) fn is_owner(caller: &Caller, inode: &Inode) -> bool {
    caller.is_root() || caller.uid == inode.uid
}
