//! What the control directory shows of itself: the attributes of its nodes and snapshot roots,
//! and the listings of its directories.

use super::ControlFs;
use super::nodes::{Node, snapshot_ino};
use crate::error::FsResult;
use crate::policy::Need;
use crate::types::{Caller, DirEntry, FileAttr, FileType, Ino, Inode};

impl ControlFs {
    /// Attributes of a fixed control node: owned by the root directory's owner; command files are
    /// writable by whoever may write the root (and not at all on a read-only volume); the audit
    /// trail is readable by that owner (and root) only.
    pub(super) async fn control_attr(&self, caller: &Caller, node: Node) -> FsResult<FileAttr> {
        self.volume.admit_path(caller, node.path(), Need::Read)?;
        let root = self.inner.getattr(caller, Ino::ROOT).await?;
        let now = self.volume.now();
        let (kind, perm, size, nlink) = if node.is_dir() {
            let subdirs = node.children().filter(|n| n.is_dir()).count() as u32;
            (FileType::Directory, 0o555, 0, 2 + subdirs)
        } else {
            // Command files read as their usage help.
            let size = self.content(node).await?.len() as u64;
            let writable = node.is_command() && !self.inner.is_read_only();
            let perm = if writable {
                root.perm & 0o666 | 0o600
            } else if node == Node::AuditRecent {
                // It names every user's paths and processes: for the tree's owner only.
                0o400
            } else {
                0o444
            };
            (FileType::Regular, perm, size, 1)
        };
        Ok(FileAttr {
            ino: node.ino(),
            kind,
            perm,
            nlink,
            uid: root.uid,
            gid: root.gid,
            size,
            blocks: size.div_ceil(512),
            blksize: 4096,
            atime: now,
            mtime: now,
            ctime: now,
            btime: root.btime,
            rdev: 0,
        })
    }

    /// Attributes of a snapshot's inode, numbered for this mount.
    pub(super) fn snapshot_attr(slot: u32, mut attr: FileAttr) -> FsResult<FileAttr> {
        attr.ino = snapshot_ino(slot, attr.ino)?;
        Ok(attr)
    }

    /// Entries of a control directory after `offset`: `.`, `..`, then the children (for
    /// `snapshots`, one per checkpoint, by name).
    pub(super) async fn control_entries(&self, node: Node, offset: u64) -> FsResult<Vec<DirEntry>> {
        let parent = node.parent().map_or(Ino::ROOT, Node::ino);
        let mut all = vec![
            (b".".to_vec(), node.ino(), FileType::Directory),
            (b"..".to_vec(), parent, FileType::Directory),
        ];
        if node == Node::Snapshots {
            let tree = self.volume.layers().tree().await?;
            for layer in &tree.layers {
                if let Some(name) = &layer.name {
                    let slot = self.slot_of(layer.id).await?;
                    all.push((
                        name.as_bytes().to_vec(),
                        snapshot_ino(slot, Ino::ROOT)?,
                        FileType::Directory,
                    ));
                }
            }
        } else {
            for child in node.children() {
                let kind = if child.is_dir() {
                    FileType::Directory
                } else {
                    FileType::Regular
                };
                all.push((child.name().to_vec(), child.ino(), kind));
            }
        }
        Ok(all
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (name, ino, kind))| DirEntry {
                name,
                ino,
                kind,
                next_offset: i as u64 + 1,
            })
            .collect())
    }
}

/// The permission-relevant part of synthesized attributes.
pub(super) fn as_inode(attr: &FileAttr) -> Inode {
    Inode {
        ino: attr.ino,
        kind: attr.kind,
        perm: attr.perm,
        uid: attr.uid,
        gid: attr.gid,
        nlink: attr.nlink,
        size: attr.size,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        btime: attr.btime,
        rdev: attr.rdev,
        parent: Ino::ROOT,
        target: Vec::new(),
    }
}
