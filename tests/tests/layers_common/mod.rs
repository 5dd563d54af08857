//! Helpers shared by the `conformance_layers*` test crates: whole-tree snapshots, layer helpers
//! (checkpoint, switch, time travel) and path-based changes made as root.
//!
//! Each crate includes this module with `mod layers_common;` and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;

use tarbox_fs::Filesystem as _;
use tarbox_fs::LayerRef;
use tarbox_fs::{
    Caller, Engine, EngineConfig, FileAttr, FileType, FsResult, Ino, LayerId, LayerTree,
    RenameFlags, SetAttr, TimeSet, Timestamp, Volume, VolumeOptions, XattrMode,
};
use tarbox_tests::TestVolume;

pub(crate) const BS: usize = 4096;

pub(crate) const PLAIN: RenameFlags = RenameFlags {
    no_replace: false,
    exchange: false,
};

// ---------------------------------------------------------------------------------------------
// Whole-tree snapshots
// ---------------------------------------------------------------------------------------------

/// What a node holds.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Content {
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Dir,
    Other,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::File(d) => {
                let head: Vec<u8> = d.iter().take(24).copied().collect();
                write!(
                    f,
                    "File({} bytes {:?}{})",
                    d.len(),
                    String::from_utf8_lossy(&head),
                    if d.len() > 24 { "…" } else { "" }
                )
            }
            Content::Symlink(t) => write!(f, "Symlink({:?})", String::from_utf8_lossy(t)),
            Content::Dir => f.write_str("Dir"),
            Content::Other => f.write_str("Other"),
        }
    }
}

/// Everything observable about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) attr: FileAttr,
    pub(crate) content: Content,
    pub(crate) xattrs: BTreeMap<String, Vec<u8>>,
}

pub(crate) type Tree = BTreeMap<String, Node>;

/// Every path of the volume's tree (the root is `/`), walked through `readdir` as root.
pub(crate) async fn snapshot(v: &Volume) -> Tree {
    let root = Caller::root();
    let mut out = Tree::new();
    let mut stack = vec![("/".to_owned(), Ino::ROOT)];
    while let Some((path, ino)) = stack.pop() {
        let attr = v
            .getattr(&root, ino)
            .await
            .unwrap_or_else(|e| panic!("getattr {path}: {e}"));
        let content = match attr.kind {
            FileType::Regular => Content::File(
                read_ino(v, ino)
                    .await
                    .unwrap_or_else(|e| panic!("read {path}: {e}")),
            ),
            FileType::Symlink => Content::Symlink(
                v.readlink(&root, ino)
                    .await
                    .unwrap_or_else(|e| panic!("readlink {path}: {e}")),
            ),
            FileType::Directory => {
                for (name, child) in list_dir(v, ino).await {
                    let child_path = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((child_path, child));
                }
                Content::Dir
            }
            _ => Content::Other,
        };
        let mut xattrs = BTreeMap::new();
        if attr.kind != FileType::Symlink {
            for name in v
                .listxattr(&root, ino)
                .await
                .unwrap_or_else(|e| panic!("listxattr {path}: {e}"))
            {
                let value = v
                    .getxattr(&root, ino, &name)
                    .await
                    .unwrap_or_else(|e| panic!("getxattr {path}: {e}"));
                xattrs.insert(String::from_utf8_lossy(&name).into_owned(), value);
            }
        }
        out.insert(
            path,
            Node {
                attr,
                content,
                xattrs,
            },
        );
    }
    out
}

/// The names and inodes of a directory, without `.` and `..`.
pub(crate) async fn list_dir(v: &Volume, ino: Ino) -> Vec<(String, Ino)> {
    let root = Caller::root();
    let fh = v.opendir(&root, ino).await.expect("opendir");
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = v.readdir(&root, ino, fh, offset).await.expect("readdir");
        let Some(last) = page.last() else { break };
        offset = last.next_offset;
        for e in page {
            if e.name != b"." && e.name != b".." {
                out.push((String::from_utf8_lossy(&e.name).into_owned(), e.ino));
            }
        }
    }
    v.releasedir(&root, fh).await.expect("releasedir");
    out
}

/// Everything a file holds, read through a fresh handle in odd-sized chunks.
pub(crate) async fn read_ino(v: &Volume, ino: Ino) -> FsResult<Vec<u8>> {
    let root = Caller::root();
    let fh = v.open(&root, ino, libc::O_RDONLY).await?;
    let mut out = Vec::new();
    let result = loop {
        match v.read(&root, fh, out.len() as u64, 70_001).await {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => break Err(e),
        }
    };
    v.release(&root, fh).await?;
    result.map(|()| out)
}

/// Look a path up on any volume (a time-travel view included).
pub(crate) async fn lookup(v: &Volume, path: &str) -> FsResult<FileAttr> {
    let root = Caller::root();
    let mut attr = v.getattr(&root, Ino::ROOT).await?;
    for name in path.split('/').filter(|c| !c.is_empty()) {
        attr = v.lookup(&root, attr.ino, name.as_bytes()).await?;
    }
    Ok(attr)
}

/// The content of a file on any volume.
pub(crate) async fn read_path(v: &Volume, path: &str) -> FsResult<Vec<u8>> {
    let attr = lookup(v, path).await?;
    read_ino(v, attr.ino).await
}

/// Assert two snapshots are equal, naming the first path that differs.
#[track_caller]
pub(crate) fn assert_same_tree(got: &Tree, want: &Tree, what: &str) {
    let got_paths: Vec<&String> = got.keys().collect();
    let want_paths: Vec<&String> = want.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: the paths differ");
    for (path, node) in want {
        assert_eq!(&got[path], node, "{what}: {path} differs");
    }
}

// ---------------------------------------------------------------------------------------------
// Layer helpers
// ---------------------------------------------------------------------------------------------

/// A read-only view of `layer` (a checkpoint name or `#id`).
pub(crate) async fn time_travel(t: &TestVolume, layer: &str) -> FsResult<Volume> {
    t.engine
        .volume_with(
            &t.tenant,
            VolumeOptions {
                layer: Some(LayerRef::from(layer)),
                ..VolumeOptions::default()
            },
        )
        .await
}

pub(crate) async fn travel(t: &TestVolume, layer: &str) -> Volume {
    time_travel(t, layer)
        .await
        .unwrap_or_else(|e| panic!("time travel to {layer}: {e}"))
}

/// A read-only volume of the tenant (of `layer`, or following the head) on another engine over
/// the same store, with nothing cached: it shows what the store holds. Close the engine after.
pub(crate) async fn uncached(t: &TestVolume, layer: Option<&str>) -> (Engine, Volume) {
    let engine = Engine::with_backend(t.engine.backend().clone(), EngineConfig::default())
        .await
        .expect("another engine");
    let options = VolumeOptions {
        read_only: true,
        layer: layer.map(LayerRef::from),
        ..VolumeOptions::default()
    };
    let volume = engine
        .volume_with(&t.tenant, options)
        .await
        .expect("a volume on another engine");
    (engine, volume)
}

pub(crate) async fn checkpoint(t: &TestVolume, name: &str) -> LayerId {
    t.volume
        .layers()
        .checkpoint(name, "")
        .await
        .unwrap_or_else(|e| panic!("checkpoint {name}: {e}"))
        .id
}

pub(crate) async fn switch(t: &TestVolume, target: &str) -> LayerId {
    t.volume
        .layers()
        .switch_to(&LayerRef::from(&target))
        .await
        .unwrap_or_else(|e| panic!("switch to {target}: {e}"))
        .id
}

pub(crate) async fn tree(t: &TestVolume) -> LayerTree {
    t.volume.layers().tree().await.expect("layers")
}

pub(crate) fn ids(tree: &LayerTree) -> Vec<LayerId> {
    tree.layers.iter().map(|l| l.id).collect()
}

pub(crate) fn names(tree: &LayerTree) -> Vec<String> {
    tree.layers.iter().filter_map(|l| l.name.clone()).collect()
}

pub(crate) fn id_ref(id: LayerId) -> String {
    format!("#{id}")
}

pub(crate) async fn set_mtime(t: &TestVolume, path: &str, time: Timestamp) {
    let ino = t.ino(path).await;
    let set = SetAttr {
        mtime: Some(TimeSet::At(time)),
        ..SetAttr::default()
    };
    t.volume
        .setattr(&Caller::root(), ino, &set)
        .await
        .unwrap_or_else(|e| panic!("utimes {path}: {e}"));
}

pub(crate) async fn set_xattr(t: &TestVolume, path: &str, name: &str, value: &[u8]) {
    let ino = t.ino(path).await;
    t.volume
        .setxattr(&Caller::root(), ino, name.as_bytes(), value, XattrMode::Any)
        .await
        .unwrap_or_else(|e| panic!("setxattr {name} on {path}: {e}"));
}

pub(crate) async fn unlink(t: &TestVolume, path: &str) {
    let (dir, name) = t.parent(path).await;
    t.volume
        .unlink(&Caller::root(), dir, &name)
        .await
        .unwrap_or_else(|e| panic!("unlink {path}: {e}"));
}

pub(crate) async fn rename(t: &TestVolume, from: &str, to: &str) {
    let (sp, sname) = t.parent(from).await;
    let (dp, dname) = t.parent(to).await;
    t.volume
        .rename(&Caller::root(), sp, &sname, dp, &dname, PLAIN)
        .await
        .unwrap_or_else(|e| panic!("rename {from} -> {to}: {e}"));
}

pub(crate) async fn symlink(t: &TestVolume, path: &str, target: &str) {
    let (dir, name) = t.parent(path).await;
    t.volume
        .symlink(&Caller::root(), dir, &name, target.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("symlink {path}: {e}"));
}

pub(crate) async fn hard_link(t: &TestVolume, existing: &str, new: &str) {
    let ino = t.ino(existing).await;
    let (dir, name) = t.parent(new).await;
    t.volume
        .link(&Caller::root(), ino, dir, &name)
        .await
        .unwrap_or_else(|e| panic!("link {existing} {new}: {e}"));
}

/// Write `data` at `offset` of an existing file through a fresh handle.
pub(crate) async fn pwrite_path(t: &TestVolume, path: &str, offset: u64, data: &[u8]) {
    let root = Caller::root();
    let ino = t.ino(path).await;
    let fh = t
        .volume
        .open(&root, ino, libc::O_WRONLY)
        .await
        .expect("open");
    t.volume
        .write(&root, fh, offset, data)
        .await
        .unwrap_or_else(|e| panic!("write at {offset} of {path}: {e}"));
    t.volume.release(&root, fh).await.expect("release");
}

pub(crate) async fn truncate(t: &TestVolume, path: &str, size: u64) {
    let ino = t.ino(path).await;
    let set = SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    t.volume
        .setattr(&Caller::root(), ino, &set)
        .await
        .unwrap_or_else(|e| panic!("truncate {path}: {e}"));
}
