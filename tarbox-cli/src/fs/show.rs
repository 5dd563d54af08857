//! How the file commands show files: `ls -l` mode strings and the JSON of `ls` and `stat`.

use std::collections::BTreeMap;

use serde::Serialize;
use tarbox_fs::{FileAttr, FileType};

use super::tree::lossy;

/// What `ls --output json` and `stat --output json` print for one file.
#[derive(Debug, Serialize)]
pub(super) struct StatJson {
    name: String,
    path: String,
    ino: u64,
    #[serde(rename = "type")]
    kind: FileType,
    /// Permission bits in octal, with setuid, setgid and sticky (`"0755"`).
    mode: String,
    nlink: u32,
    uid: u32,
    gid: u32,
    size: u64,
    blocks: u64,
    atime: String,
    mtime: String,
    ctime: String,
    btime: String,
    atime_ns: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    btime_ns: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Extended attributes (stat only): UTF-8 values as text, others as `0x` and hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) xattrs: Option<BTreeMap<String, String>>,
}

impl StatJson {
    pub(super) fn new(name: &[u8], path: &[u8], a: &FileAttr, target: Option<&[u8]>) -> StatJson {
        StatJson {
            name: lossy(name).into_owned(),
            path: lossy(path).into_owned(),
            ino: a.ino.0,
            kind: a.kind,
            mode: format!("{:04o}", a.perm),
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            blocks: a.blocks,
            atime: a.atime.to_rfc3339(),
            mtime: a.mtime.to_rfc3339(),
            ctime: a.ctime.to_rfc3339(),
            btime: a.btime.to_rfc3339(),
            atime_ns: a.atime.0,
            mtime_ns: a.mtime.0,
            ctime_ns: a.ctime.0,
            btime_ns: a.btime.0,
            rdev: matches!(a.kind, FileType::CharDevice | FileType::BlockDevice).then_some(a.rdev),
            target: target.map(|t| lossy(t).into_owned()),
            xattrs: None,
        }
    }
}

/// `ls -l` style type and permission string, e.g. `drwxr-xr-x`.
pub(crate) fn mode_string(kind: FileType, perm: u16) -> String {
    let t = match kind {
        FileType::Regular => '-',
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S')]
        .into_iter()
        .chain([(0, 0o1000, 't', 'T')])
    {
        let bits = (perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (perm & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// A file type in words, for messages.
pub(crate) fn type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Regular => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::CharDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
    }
}

/// An extended attribute value for display: the text if it is UTF-8, else `0x` and hex.
pub(super) fn xattr_text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut s = String::from("0x");
            for b in value {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(FileType::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(FileType::Regular, 0o4754), "-rwsr-xr--");
        assert_eq!(mode_string(FileType::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(FileType::Regular, 0o2640), "-rw-r-S---");
        assert_eq!(mode_string(FileType::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn binary_xattrs_show_as_hex() {
        assert_eq!(xattr_text(b"text"), "text");
        assert_eq!(xattr_text(&[0xff, 0x00]), "0xff00");
    }
}
