//! Differences between two layers' trees.
//!
//! Only keys written in the layers on the two chains below their common ancestor can differ, so a
//! diff asks the backend for those keys and compares each through both views: its cost follows
//! the size of the change, not of the tree. Entries tell what was added, deleted or renamed (an
//! inode that left one path and appeared at another); inodes tell what was modified in content or
//! only in metadata. Text files get a unified diff with line counts; binary files (a NUL byte, or
//! larger than [`TEXT_DIFF_LIMIT`]) report their old and new size.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use similar::{ChangeTag, TextDiff};

use super::Volume;
use super::layers::{LayerRef, LayerTree};
use crate::backend::{Backend, LayerView, StoreRead};
use crate::error::{BackendError, FsError, FsResult};
use crate::types::{FileType, Ino, Inode, LayerId};

/// Files larger than this are compared by hash and size only, never line by line.
pub const TEXT_DIFF_LIMIT: u64 = 1 << 20;

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Deleted,
    /// Content changed (possibly replaced by a new file of the same type at the same path).
    Modified,
    /// The same inode is now at another path (its content may have changed too).
    Renamed,
    /// Only mode, owner, times of a non-directory, or xattrs changed.
    Metadata,
}

impl ChangeKind {
    fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
            ChangeKind::Modified => 'M',
            ChangeKind::Renamed => 'R',
            ChangeKind::Metadata => 'm',
        }
    }
}

/// How the content of a modified file changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentDiff {
    Text {
        added_lines: usize,
        removed_lines: usize,
        /// `--- a/path`, `+++ b/path` and hunks with 3 lines of context.
        unified: String,
    },
    Binary {
        old_size: u64,
        new_size: u64,
    },
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The path in the newer tree (in the older one for deletions); non-UTF-8 bytes are shown as
    /// U+FFFD.
    pub path: String,
    /// The path in the older tree, for renames.
    pub old_path: Option<String>,
    pub file_type: FileType,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
    /// What else changed: `mode 644 -> 755`, `owner 0:0 -> 1000:1000`, `xattrs`, `mtime`.
    pub metadata: Vec<String>,
    pub content: Option<ContentDiff>,
}

/// The changes from one layer's tree to another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerDiff {
    pub from: String,
    pub to: String,
    pub changes: Vec<Change>,
}

impl LayerDiff {
    /// A summary line per change (`A /new`, `M /file (+3 -1)`, `R /old -> /new`, `D /gone`,
    /// `m /script (mode 644 -> 755)`), then the unified diffs of text files.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# changes from {} to {}", self.from, self.to);
        for c in &self.changes {
            let _ = write!(out, "{} ", c.kind.letter());
            match &c.old_path {
                Some(old) => {
                    let _ = write!(out, "{old} -> {}", c.path);
                }
                None => out.push_str(&c.path),
            }
            if c.file_type == FileType::Directory && c.kind != ChangeKind::Metadata {
                out.push('/');
            }
            let mut notes = Vec::new();
            match &c.content {
                Some(ContentDiff::Text {
                    added_lines,
                    removed_lines,
                    ..
                }) => notes.push(format!("+{added_lines} -{removed_lines}")),
                Some(ContentDiff::Binary { old_size, new_size }) => {
                    notes.push(format!("binary, {old_size} -> {new_size} bytes"));
                }
                None => {}
            }
            notes.extend(c.metadata.iter().cloned());
            if !notes.is_empty() {
                let _ = write!(out, " ({})", notes.join(", "));
            }
            out.push('\n');
        }
        for c in &self.changes {
            if let Some(ContentDiff::Text { unified, .. }) = &c.content {
                out.push_str(unified);
            }
        }
        out
    }
}

/// One side of a diff: a view and what has been learnt about its directories.
struct Side {
    reader: Box<dyn StoreRead>,
    /// Directory -> (inode -> name), filled on demand to turn inodes into paths.
    names: HashMap<Ino, HashMap<Ino, Vec<u8>>>,
    paths: HashMap<Ino, Option<Vec<u8>>>,
}

impl Side {
    fn new(backend: &dyn Backend, view: LayerView) -> Side {
        Side {
            reader: backend.reader(&view),
            names: HashMap::new(),
            paths: HashMap::new(),
        }
    }

    /// The path of `ino` in this tree; `None` if it has none (unlinked, or a hard link whose
    /// hinted directory no longer holds it).
    async fn path(&mut self, ino: Ino) -> FsResult<Option<Vec<u8>>> {
        let mut chain = Vec::new();
        let mut cur = ino;
        let mut result = None;
        for _ in 0..4096 {
            if cur == Ino::ROOT {
                result = Some(Vec::new());
                break;
            }
            if let Some(known) = self.paths.get(&cur) {
                result = known.clone();
                break;
            }
            let Some(inode) = self.reader.inode(cur).await? else {
                break;
            };
            let Some(name) = self.name_in(inode.parent, cur).await? else {
                break;
            };
            chain.push((cur, name));
            cur = inode.parent;
        }
        // Fill the cache for every inode walked, from the top down.
        for (ino, name) in chain.into_iter().rev() {
            let path = result.map(|mut p: Vec<u8>| {
                p.push(b'/');
                p.extend_from_slice(&name);
                p
            });
            self.paths.insert(ino, path.clone());
            result = path;
        }
        Ok(result)
    }

    async fn name_in(&mut self, dir: Ino, ino: Ino) -> FsResult<Option<Vec<u8>>> {
        if !self.names.contains_key(&dir) {
            let mut names = HashMap::new();
            let mut after = 0;
            loop {
                let page = self.reader.list_dir(dir, after, 1024).await?;
                let Some(last) = page.last() else { break };
                after = last.cookie;
                for e in page {
                    names.entry(e.ino).or_insert(e.name);
                }
            }
            self.names.insert(dir, names);
        }
        Ok(self.names.get(&dir).and_then(|m| m.get(&ino)).cloned())
    }
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl Volume {
    /// The changes from layer `from` to layer `to`.
    pub(crate) async fn do_diff(&self, from: &LayerRef, to: &LayerRef) -> FsResult<LayerDiff> {
        let tree = self.layer_tree().await?;
        let a = tree.resolve(from)?.clone();
        let b = tree.resolve(to)?.clone();
        self.diff_layers(&tree, a.id, b.id).await
    }

    /// The changes of the current layer against its parent: what happened since the last
    /// checkpoint or switch.
    pub(crate) async fn do_diff_current(&self) -> FsResult<LayerDiff> {
        let tree = self.layer_tree().await?;
        let head = self.view().head();
        let parent = tree.get(head).and_then(|l| l.parent).unwrap_or(head);
        self.diff_layers(&tree, parent, head).await
    }

    async fn diff_layers(
        &self,
        tree: &LayerTree,
        from: LayerId,
        to: LayerId,
    ) -> FsResult<LayerDiff> {
        let label = |id: LayerId| tree.get(id).map_or(format!("#{id}"), LayerTree::label);
        let chain_a = tree.chain(from);
        let chain_b = tree.chain(to);
        if chain_a.is_empty() || chain_b.is_empty() {
            return Err(
                BackendError::Corrupt("layer missing from its tenant's tree".into()).into(),
            );
        }
        let differing: Vec<LayerId> = chain_a
            .iter()
            .filter(|l| !chain_b.contains(l))
            .chain(chain_b.iter().filter(|l| !chain_a.contains(l)))
            .copied()
            .collect();
        let tenant = self.inner.tenant.id;
        let backend = self.backend();
        let changed = if differing.is_empty() {
            Default::default()
        } else {
            backend.layer_changes(tenant, &differing).await?
        };
        let view = |chain: Vec<LayerId>| LayerView {
            tenant,
            chain: chain.into(),
        };
        let mut old = Side::new(backend, view(chain_a));
        let mut new = Side::new(backend, view(chain_b));
        let mut out = Differ {
            volume: self,
            changes: BTreeMap::new(),
        };

        // Entries: additions, deletions, replacements; remember where inodes went.
        let mut gone: HashMap<Ino, (Vec<u8>, Inode)> = HashMap::new();
        let mut came: HashMap<Ino, (Vec<u8>, Inode)> = HashMap::new();
        for (parent, name) in &changed.entries {
            let before = old.reader.lookup_inode(*parent, name).await?;
            let after = new.reader.lookup_inode(*parent, name).await?;
            match (before, after) {
                (Some((e1, _)), Some((e2, _))) if e1.ino == e2.ino => {}
                (Some((_, i1)), Some((_, i2)))
                    if i1.kind == i2.kind && i1.kind != FileType::Directory =>
                {
                    let Some(dir) = new.path(*parent).await? else {
                        continue;
                    };
                    let path = join(&dir, name);
                    out.compare(&mut old, &mut new, &i1, &i2, &path, None, true)
                        .await?;
                }
                (before, after) => {
                    if let Some((_, i)) = before {
                        if let Some(dir) = old.path(*parent).await? {
                            gone.insert(i.ino, (join(&dir, name), i));
                        }
                    }
                    if let Some((_, i)) = after {
                        if let Some(dir) = new.path(*parent).await? {
                            came.insert(i.ino, (join(&dir, name), i));
                        }
                    }
                }
            }
        }
        for (ino, (path, inode)) in &came {
            match gone.remove(ino) {
                Some((old_path, before)) => {
                    out.compare(
                        &mut old,
                        &mut new,
                        &before,
                        inode,
                        path,
                        Some(&old_path),
                        true,
                    )
                    .await?;
                }
                None => out.simple(ChangeKind::Added, path, inode, false),
            }
        }
        for (path, inode) in gone.values() {
            // Still reachable elsewhere (another hard link): not deleted, just one name less.
            if new.reader.inode(inode.ino).await?.is_some() && new.path(inode.ino).await?.is_some()
            {
                continue;
            }
            out.simple(ChangeKind::Deleted, path, inode, true);
        }

        // Inodes changed in place, under a path both trees share.
        for ino in &changed.inodes {
            if came.contains_key(ino) {
                continue;
            }
            let (Some(before), Some(after)) =
                (old.reader.inode(*ino).await?, new.reader.inode(*ino).await?)
            else {
                continue;
            };
            let Some(path) = new.path(*ino).await? else {
                continue;
            };
            if out.changes.contains_key(&(path.clone(), false))
                || out.changes.contains_key(&(path.clone(), true))
            {
                continue;
            }
            out.compare(&mut old, &mut new, &before, &after, &path, None, false)
                .await?;
        }
        Ok(LayerDiff {
            from: label(from),
            to: label(to),
            changes: out.changes.into_values().collect(),
        })
    }
}

/// Accumulates changes by path. A path can hold two: a deletion and what replaced the deleted
/// node there (a file replaced by a directory or a symlink), so they are keyed by path and
/// whether the change is anything but a deletion, which puts the deletion first.
struct Differ<'v> {
    volume: &'v Volume,
    changes: BTreeMap<(Vec<u8>, bool), Change>,
}

impl Differ<'_> {
    fn simple(&mut self, kind: ChangeKind, path: &[u8], inode: &Inode, old: bool) {
        let size = (inode.kind != FileType::Directory).then_some(inode.size);
        self.changes.insert(
            (path.to_vec(), kind != ChangeKind::Deleted),
            Change {
                kind,
                path: show(path),
                old_path: None,
                file_type: inode.kind,
                old_size: if old { size } else { None },
                new_size: if old { None } else { size },
                metadata: Vec::new(),
                content: None,
            },
        );
    }

    /// Compare two versions of what a path holds; record a change if they differ. `entry_moved`:
    /// the path's entry changed (a rename or a replacement), which is a change by itself.
    #[allow(clippy::too_many_arguments)]
    async fn compare(
        &mut self,
        old: &mut Side,
        new: &mut Side,
        before: &Inode,
        after: &Inode,
        path: &[u8],
        old_path: Option<&[u8]>,
        entry_moved: bool,
    ) -> FsResult<()> {
        let mut metadata = Vec::new();
        if before.perm != after.perm {
            metadata.push(format!("mode {:o} -> {:o}", before.perm, after.perm));
        }
        if (before.uid, before.gid) != (after.uid, after.gid) {
            metadata.push(format!(
                "owner {}:{} -> {}:{}",
                before.uid, before.gid, after.uid, after.gid
            ));
        }
        if xattrs(old.reader.as_mut(), before.ino).await?
            != xattrs(new.reader.as_mut(), after.ino).await?
        {
            metadata.push("xattrs".to_owned());
        }
        let content = if before.kind == FileType::Directory {
            None
        } else {
            self.content_diff(old, new, before, after, path, old_path)
                .await?
        };
        if content.is_none() && before.kind != FileType::Directory && before.mtime != after.mtime {
            metadata.push("mtime".to_owned());
        }
        let kind = match (old_path, &content) {
            (Some(_), _) => ChangeKind::Renamed,
            (None, Some(_)) => ChangeKind::Modified,
            (None, None) if !metadata.is_empty() => ChangeKind::Metadata,
            (None, None) if entry_moved => ChangeKind::Modified,
            (None, None) => return Ok(()),
        };
        let sized = |i: &Inode| (i.kind != FileType::Directory).then_some(i.size);
        self.changes.insert(
            (path.to_vec(), true),
            Change {
                kind,
                path: show(path),
                old_path: old_path.map(show),
                file_type: after.kind,
                old_size: sized(before),
                new_size: sized(after),
                metadata,
                content,
            },
        );
        Ok(())
    }

    async fn content_diff(
        &mut self,
        old: &mut Side,
        new: &mut Side,
        before: &Inode,
        after: &Inode,
        path: &[u8],
        old_path: Option<&[u8]>,
    ) -> FsResult<Option<ContentDiff>> {
        if before.kind == FileType::Symlink || after.kind == FileType::Symlink {
            if before.target == after.target {
                return Ok(None);
            }
            return Ok(Some(text_diff(
                &before.target,
                &after.target,
                path,
                old_path,
            )));
        }
        if before.kind != FileType::Regular || after.kind != FileType::Regular {
            return Ok(None);
        }
        let bs = self.volume.block_size();
        let blocks = |i: &Inode| 0..i.size.div_ceil(bs);
        let map_a = old.reader.block_map(before.ino, blocks(before)).await?;
        let map_b = new.reader.block_map(after.ino, blocks(after)).await?;
        if before.size == after.size && map_a == map_b {
            return Ok(None);
        }
        if before.size > TEXT_DIFF_LIMIT || after.size > TEXT_DIFF_LIMIT {
            return Ok(Some(ContentDiff::Binary {
                old_size: before.size,
                new_size: after.size,
            }));
        }
        let a = self.read_all(old, before, &map_a).await?;
        let b = self.read_all(new, after, &map_b).await?;
        if a == b {
            return Ok(None);
        }
        if a.contains(&0) || b.contains(&0) {
            return Ok(Some(ContentDiff::Binary {
                old_size: before.size,
                new_size: after.size,
            }));
        }
        Ok(Some(text_diff(&a, &b, path, old_path)))
    }

    async fn read_all(
        &self,
        side: &mut Side,
        inode: &Inode,
        map: &[(u64, crate::backend::BlockHash)],
    ) -> FsResult<Vec<u8>> {
        let bs = self.volume.block_size();
        let contents = self.volume.fetch_blocks(side.reader.as_mut(), map).await?;
        let size = usize::try_from(inode.size).map_err(|_| FsError::FileTooBig)?;
        let mut out = vec![0u8; size];
        for (idx, data) in contents {
            let start = (idx * bs) as usize;
            let end = (start + data.len()).min(size);
            if start < end {
                out[start..end].copy_from_slice(&data[..end - start]);
            }
        }
        Ok(out)
    }
}

async fn xattrs(r: &mut dyn StoreRead, ino: Ino) -> FsResult<Vec<(Vec<u8>, Option<Vec<u8>>)>> {
    let mut out = Vec::new();
    for name in r.xattr_names(ino).await? {
        let value = r.xattr(ino, &name).await?;
        out.push((name, value));
    }
    Ok(out)
}

fn text_diff(a: &[u8], b: &[u8], path: &[u8], old_path: Option<&[u8]>) -> ContentDiff {
    let diff = TextDiff::from_lines(a, b);
    let (mut added_lines, mut removed_lines) = (0, 0);
    for change in diff.iter_all_changes() {
        match change.tag() {
            ChangeTag::Insert => added_lines += 1,
            ChangeTag::Delete => removed_lines += 1,
            ChangeTag::Equal => {}
        }
    }
    let old_name = format!("a{}", show(old_path.unwrap_or(path)));
    let new_name = format!("b{}", show(path));
    let unified = diff
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &new_name)
        .to_string();
    ContentDiff::Text {
        added_lines,
        removed_lines,
        unified,
    }
}
