//! Paths over a [`Filesystem`], for frontends that have no kernel to walk them: the CLI's file
//! commands, export and import, and the CSI driver.
//!
//! Resolution is what Linux does for a process whose root is the tenant's root: one `lookup` per
//! component (each checks search permission for the caller), `.` skipped, `..` looked up like any
//! name, symlinks followed in the middle of a path and, when asked, at its end; an absolute
//! symlink target restarts at the root, and more than [`MAX_SYMLINKS`] links is `ELOOP`.

use std::collections::VecDeque;

use crate::error::{FsError, FsResult};
use crate::filesystem::Filesystem;
use crate::types::{Caller, DirEntry, FileAttr, FileType, Ino};

/// Symlinks followed while resolving one path before giving up (`ELOOP`), as Linux.
pub const MAX_SYMLINKS: u32 = 40;

/// The components of a path, without empty ones and `.`.
pub fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// Resolve `path` from the root (a relative path is taken from the root too). Symlinks are
/// followed in the middle of the path, and at its end when `follow` is set.
pub async fn resolve(
    fs: &dyn Filesystem,
    caller: &Caller,
    path: &[u8],
    follow: bool,
) -> FsResult<FileAttr> {
    let root = fs.getattr(caller, Ino::ROOT).await?;
    resolve_from(fs, caller, root, path, follow).await
}

/// Resolve `path` relative to directory `start`.
pub async fn resolve_from(
    fs: &dyn Filesystem,
    caller: &Caller,
    start: FileAttr,
    path: &[u8],
    follow: bool,
) -> FsResult<FileAttr> {
    let mut queue: VecDeque<Vec<u8>> = components(path).map(<[u8]>::to_vec).collect();
    let mut cur = start;
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if cur.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        let attr = fs.lookup(caller, cur.ino, &name).await?;
        if attr.kind == FileType::Symlink && (follow || !queue.is_empty()) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(FsError::Loop);
            }
            let target = fs.readlink(caller, attr.ino).await?;
            if target.starts_with(b"/") {
                cur = fs.getattr(caller, Ino::ROOT).await?;
            }
            for c in components(&target).rev() {
                queue.push_front(c.to_vec());
            }
            continue;
        }
        cur = attr;
    }
    Ok(cur)
}

/// Split `path` into the part naming its directory and its last component (trailing `/` and
/// `.` components ignored); `None` for the root.
pub fn split_last(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let name = components(path).next_back()?;
    let mut end = path.len();
    loop {
        let rest = &path[..end];
        if rest.ends_with(b"/") {
            end -= 1;
        } else if rest.ends_with(b"/.") {
            end -= 2;
        } else {
            break;
        }
    }
    Some((&path[..end - name.len()], name))
}

/// The directory holding the last component of `path` (symlinks followed), and that component.
/// `EINVAL` for the root, `ENOTDIR` when the parent is not a directory.
pub async fn resolve_parent<'p>(
    fs: &dyn Filesystem,
    caller: &Caller,
    path: &'p [u8],
) -> FsResult<(FileAttr, &'p [u8])> {
    let (dir_part, name) = split_last(path).ok_or(FsError::Invalid("the root has no parent"))?;
    let dir = resolve(fs, caller, dir_part, true).await?;
    if dir.kind != FileType::Directory {
        return Err(FsError::NotDir);
    }
    Ok((dir, name))
}

/// Every entry of directory `dir` except `.` and `..`, sorted by name, with attributes. The
/// directory handle is released on every path.
pub async fn list_dir(
    fs: &dyn Filesystem,
    caller: &Caller,
    dir: Ino,
) -> FsResult<Vec<(DirEntry, FileAttr)>> {
    let fh = fs.opendir(caller, dir).await?;
    let listed = async {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = fs.readdirplus(caller, dir, fh, offset).await?;
            let next = match page.last() {
                Some((e, _)) => e.next_offset,
                // readdirplus leaves out entries removed while it ran: only an empty readdir is
                // the end of the directory.
                None => match fs.readdir(caller, dir, fh, offset).await?.last() {
                    Some(e) => e.next_offset,
                    None => return Ok::<_, FsError>(out),
                },
            };
            out.extend(page);
            offset = next;
        }
    }
    .await;
    let released = fs.releasedir(caller, fh).await;
    let mut entries = listed?;
    released?;
    entries.retain(|(e, _)| e.name != b"." && e.name != b"..");
    entries.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_components() {
        let parts: Vec<&[u8]> = components(b"//a/./b//c/").collect();
        assert_eq!(parts, vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(components(b"/").count(), 0);
    }

    #[test]
    fn the_last_component_is_split_off() {
        assert_eq!(split_last(b"/a/b"), Some((&b"/a/"[..], &b"b"[..])));
        assert_eq!(split_last(b"/a/b/./"), Some((&b"/a/"[..], &b"b"[..])));
        assert_eq!(split_last(b"/a"), Some((&b"/"[..], &b"a"[..])));
        assert_eq!(split_last(b"/"), None);
    }
}
