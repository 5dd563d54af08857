//! Consistency check of a tenant's tree as the store holds it: every name leads to an inode of
//! the kind the name says, link counts match the names, directories know their parent, every
//! mapped block is stored, and usage matches what the tree holds.
//!
//! The check only reads. It walks the tree through the head layer, so it sees exactly what a
//! mount sees; run it on a quiet tenant (a concurrent change can show as a transient problem).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use super::{Engine, VolumeOptions};
use crate::backend::StoreRead;
use crate::error::FsResult;
use crate::types::{FileType, Ino, Inode, Usage};

/// Entries read per directory page.
const PAGE: usize = 1024;
/// Block hashes asked for at once.
const BLOCK_BATCH: usize = 256;

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsckProblem {
    /// A path that shows it (the first one found).
    pub path: String,
    pub problem: String,
}

/// What [`Engine::fsck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    pub directories: u64,
    pub files: u64,
    pub other: u64,
    /// Bytes and inodes the reachable tree accounts for.
    pub counted: Usage,
    /// What the store charges the tenant.
    pub charged: Usage,
    pub problems: Vec<FsckProblem>,
    /// Not errors: differences with a benign explanation (open-but-unlinked files).
    pub notes: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Seen {
    inode: Inode,
    path: String,
    names: u32,
    subdirs: u32,
}

impl Engine {
    /// Check `tenant`'s tree; `progress` is called with the number of inodes checked so far.
    pub async fn fsck(
        &self,
        tenant: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> FsResult<FsckReport> {
        let options = VolumeOptions {
            read_only: true,
            ..VolumeOptions::default()
        };
        let volume = self.volume_with(tenant, options).await?;
        // What the store holds, never what a cache remembers.
        let mut r = volume.fresh_reader();
        let mut report = FsckReport::default();
        let mut seen: BTreeMap<Ino, Seen> = BTreeMap::new();
        let problem = |report: &mut FsckReport, path: &str, what: String| {
            report.problems.push(FsckProblem {
                path: path.to_string(),
                problem: what,
            });
        };

        let Some(root) = r.inode(Ino::ROOT).await? else {
            problem(&mut report, "/", "the root directory is missing".into());
            return Ok(report);
        };
        seen.insert(
            Ino::ROOT,
            Seen {
                inode: root,
                path: "/".into(),
                names: 0,
                subdirs: 0,
            },
        );
        let mut queue = VecDeque::from([Ino::ROOT]);
        while let Some(dir) = queue.pop_front() {
            let dir_path = seen.get(&dir).map(|s| s.path.clone()).unwrap_or_default();
            let mut after = 0;
            loop {
                let page = r.list_dir(dir, after, PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.cookie;
                let inos: Vec<Ino> = page.iter().map(|e| e.ino).collect();
                let found: HashMap<Ino, Inode> = r
                    .inodes(&inos)
                    .await?
                    .into_iter()
                    .map(|i| (i.ino, i))
                    .collect();
                for entry in page {
                    let name = crate::audit::path_display(&entry.name);
                    let path = if dir == Ino::ROOT {
                        format!("/{name}")
                    } else {
                        format!("{dir_path}/{name}")
                    };
                    let Some(inode) = found.get(&entry.ino) else {
                        problem(
                            &mut report,
                            &path,
                            format!("names inode {} which does not exist", entry.ino),
                        );
                        continue;
                    };
                    if inode.kind != entry.kind {
                        problem(
                            &mut report,
                            &path,
                            format!(
                                "entry says {:?}, inode {} is {:?}",
                                entry.kind, entry.ino, inode.kind
                            ),
                        );
                    }
                    if inode.kind == FileType::Directory {
                        if let Some(parent) = seen.get_mut(&dir) {
                            parent.subdirs += 1;
                        }
                        if inode.parent != dir {
                            problem(
                                &mut report,
                                &path,
                                format!(
                                    "directory's parent is {}, but it is listed in {dir}",
                                    inode.parent
                                ),
                            );
                        }
                    }
                    match seen.get_mut(&entry.ino) {
                        Some(s) if inode.kind == FileType::Directory => {
                            problem(
                                &mut report,
                                &path,
                                format!("directory also named {}", s.path),
                            );
                        }
                        Some(s) => s.names += 1,
                        None => {
                            if inode.kind == FileType::Directory {
                                queue.push_back(entry.ino);
                            }
                            seen.insert(
                                entry.ino,
                                Seen {
                                    inode: inode.clone(),
                                    path,
                                    names: 1,
                                    subdirs: 0,
                                },
                            );
                            progress(seen.len() as u64);
                        }
                    }
                }
            }
        }

        let bs = u64::from(volume.inner.tenant.block_size);
        for s in seen.values() {
            let inode = &s.inode;
            report.counted.inodes += 1;
            report.counted.bytes += inode.charged_bytes();
            match inode.kind {
                FileType::Directory => {
                    report.directories += 1;
                    if inode.nlink != 2 + s.subdirs {
                        problem(
                            &mut report,
                            &s.path,
                            format!(
                                "link count {} but {} subdirectories (expected {})",
                                inode.nlink,
                                s.subdirs,
                                2 + s.subdirs
                            ),
                        );
                    }
                }
                kind => {
                    if kind == FileType::Regular {
                        report.files += 1;
                    } else {
                        report.other += 1;
                    }
                    if inode.nlink != s.names {
                        problem(
                            &mut report,
                            &s.path,
                            format!("link count {} but {} names", inode.nlink, s.names),
                        );
                    }
                }
            }
            if inode.kind == FileType::Regular {
                check_blocks(&mut *r, inode, bs, &s.path, &mut report).await?;
            }
        }

        report.charged = self.shared.backend.usage(volume.inner.tenant.id).await?;
        let (c, u) = (report.counted, report.charged);
        if c != u {
            let note = format!(
                "usage charged ({} bytes, {} inodes) differs from the tree ({} bytes, {} inodes)",
                u.bytes, u.inodes, c.bytes, c.inodes
            );
            if u.bytes >= c.bytes && u.inodes >= c.inodes {
                // Files unlinked while open are charged until their last close.
                report.notes.push(format!(
                    "{note}: open-but-unlinked files or a concurrent change"
                ));
            } else {
                problem(&mut report, "/", note);
            }
        }
        Ok(report)
    }
}

/// Every mapped block of a regular file is stored, and none lies past its end.
async fn check_blocks(
    r: &mut dyn StoreRead,
    inode: &Inode,
    bs: u64,
    path: &str,
    report: &mut FsckReport,
) -> FsResult<()> {
    let map = r.block_map(inode.ino, 0..u64::MAX).await?;
    let blocks_in_size = inode.size.div_ceil(bs);
    if let Some((idx, _)) = map.iter().find(|(idx, _)| *idx >= blocks_in_size) {
        report.problems.push(FsckProblem {
            path: path.to_string(),
            problem: format!(
                "block {idx} mapped past the end of the file (size {})",
                inode.size
            ),
        });
    }
    let mut hashes: Vec<_> = map.iter().map(|(_, h)| *h).collect();
    hashes.sort();
    hashes.dedup();
    for chunk in hashes.chunks(BLOCK_BATCH) {
        let stored = r.blocks(chunk).await?;
        // A patched block's parts (see `patched.rs`) must be there too.
        let mut parts: Vec<_> = stored
            .iter()
            .flat_map(|b| b.parts.iter().copied())
            .collect();
        parts.sort();
        parts.dedup();
        let parts_stored = if parts.is_empty() {
            0
        } else {
            r.blocks(&parts).await?.len()
        };
        let missing = chunk.len() - stored.len() + parts.len() - parts_stored;
        if missing > 0 {
            report.problems.push(FsckProblem {
                path: path.to_string(),
                problem: format!("{missing} of its blocks are missing from the store"),
            });
        }
    }
    Ok(())
}
