//! Copy-on-write layers: checkpoints, switches (rollback and roll-forward), dropping layers, time
//! travel, usage across switches, open handles across switches, diffs and automatic checkpoints.
//!
//! Every test asserts what a user observes: bytes read back, `stat`, listings, errnos, the layer
//! tree as `layers()` lists it, and diffs. Trees are compared whole through [`snapshot`], which
//! walks a volume with `readdir` and records every node's attributes, content or target, and
//! extended attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tarbox_fs::Filesystem as _;
use tarbox_fs::LayerRef;
use tarbox_fs::{
    Caller, ChangeKind, Clock, ContentDiff, Engine, EngineConfig, FileAttr, FileType, FsResult,
    Ino, LayerDiff, LayerId, LayerTree, Quota, RenameFlags, SetAttr, TenantOptions, TimeSet,
    Timestamp, Volume, VolumeOptions, XattrMode,
};
use tarbox_tests::{ManualClock, TestVolume, assert_errno, backend_tests, noise, small_blocks};

const BS: usize = 4096;
const MIB: usize = 1 << 20;

const PLAIN: RenameFlags = RenameFlags {
    no_replace: false,
    exchange: false,
};

// ---------------------------------------------------------------------------------------------
// Whole-tree snapshots
// ---------------------------------------------------------------------------------------------

/// What a node holds.
#[derive(Clone, PartialEq, Eq)]
enum Content {
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
struct Node {
    attr: FileAttr,
    content: Content,
    xattrs: BTreeMap<String, Vec<u8>>,
}

type Tree = BTreeMap<String, Node>;

/// Every path of the volume's tree (the root is `/`), walked through `readdir` as root.
async fn snapshot(v: &Volume) -> Tree {
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
async fn list_dir(v: &Volume, ino: Ino) -> Vec<(String, Ino)> {
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
async fn read_ino(v: &Volume, ino: Ino) -> FsResult<Vec<u8>> {
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
async fn lookup(v: &Volume, path: &str) -> FsResult<FileAttr> {
    let root = Caller::root();
    let mut attr = v.getattr(&root, Ino::ROOT).await?;
    for name in path.split('/').filter(|c| !c.is_empty()) {
        attr = v.lookup(&root, attr.ino, name.as_bytes()).await?;
    }
    Ok(attr)
}

/// The content of a file on any volume.
async fn read_path(v: &Volume, path: &str) -> FsResult<Vec<u8>> {
    let attr = lookup(v, path).await?;
    read_ino(v, attr.ino).await
}

/// Assert two snapshots are equal, naming the first path that differs.
#[track_caller]
fn assert_same_tree(got: &Tree, want: &Tree, what: &str) {
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
async fn time_travel(t: &TestVolume, layer: &str) -> FsResult<Volume> {
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

async fn travel(t: &TestVolume, layer: &str) -> Volume {
    time_travel(t, layer)
        .await
        .unwrap_or_else(|e| panic!("time travel to {layer}: {e}"))
}

/// A read-only volume of the tenant (of `layer`, or following the head) on another engine over
/// the same store, with nothing cached: it shows what the store holds. Close the engine after.
async fn uncached(t: &TestVolume, layer: Option<&str>) -> (Engine, Volume) {
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

async fn checkpoint(t: &TestVolume, name: &str) -> LayerId {
    t.volume
        .layers()
        .checkpoint(name, "")
        .await
        .unwrap_or_else(|e| panic!("checkpoint {name}: {e}"))
        .id
}

async fn switch(t: &TestVolume, target: &str) -> LayerId {
    t.volume
        .layers()
        .switch_to(&LayerRef::from(&target))
        .await
        .unwrap_or_else(|e| panic!("switch to {target}: {e}"))
        .id
}

async fn tree(t: &TestVolume) -> LayerTree {
    t.volume.layers().tree().await.expect("layers")
}

fn ids(tree: &LayerTree) -> Vec<LayerId> {
    tree.layers.iter().map(|l| l.id).collect()
}

fn names(tree: &LayerTree) -> Vec<String> {
    tree.layers.iter().filter_map(|l| l.name.clone()).collect()
}

fn id_ref(id: LayerId) -> String {
    format!("#{id}")
}

async fn set_mtime(t: &TestVolume, path: &str, time: Timestamp) {
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

async fn set_xattr(t: &TestVolume, path: &str, name: &str, value: &[u8]) {
    let ino = t.ino(path).await;
    t.volume
        .setxattr(&Caller::root(), ino, name.as_bytes(), value, XattrMode::Any)
        .await
        .unwrap_or_else(|e| panic!("setxattr {name} on {path}: {e}"));
}

async fn unlink(t: &TestVolume, path: &str) {
    let (dir, name) = t.parent(path).await;
    t.volume
        .unlink(&Caller::root(), dir, &name)
        .await
        .unwrap_or_else(|e| panic!("unlink {path}: {e}"));
}

async fn rename(t: &TestVolume, from: &str, to: &str) {
    let (sp, sname) = t.parent(from).await;
    let (dp, dname) = t.parent(to).await;
    t.volume
        .rename(&Caller::root(), sp, &sname, dp, &dname, PLAIN)
        .await
        .unwrap_or_else(|e| panic!("rename {from} -> {to}: {e}"));
}

async fn symlink(t: &TestVolume, path: &str, target: &str) {
    let (dir, name) = t.parent(path).await;
    t.volume
        .symlink(&Caller::root(), dir, &name, target.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("symlink {path}: {e}"));
}

async fn hard_link(t: &TestVolume, existing: &str, new: &str) {
    let ino = t.ino(existing).await;
    let (dir, name) = t.parent(new).await;
    t.volume
        .link(&Caller::root(), ino, dir, &name)
        .await
        .unwrap_or_else(|e| panic!("link {existing} {new}: {e}"));
}

/// Write `data` at `offset` of an existing file through a fresh handle.
async fn pwrite_path(t: &TestVolume, path: &str, offset: u64, data: &[u8]) {
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

async fn truncate(t: &TestVolume, path: &str, size: u64) {
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

/// A tree with one of everything: text files of every line-ending flavour, non-UTF-8 and binary
/// files, a file of many blocks, a sparse file, modes, owners, explicit times, symlinks, hard
/// links, a FIFO, nested directories and xattrs.
async fn build_rich_tree(s: &TestVolume) {
    let root = Caller::root();
    s.mkdir_p("/docs").await;
    s.mkdir_p("/a/b/c").await;
    s.write_file("/docs/crlf.txt", b"first line\r\nsecond line\r\n")
        .await;
    s.write_file("/docs/no-newline.txt", b"no trailing newline")
        .await;
    s.write_file("/docs/lone-newline.txt", b"\n").await;
    s.write_file("/docs/latin1.txt", b"caf\xe9 \xff\xfe na\xefve\n")
        .await;
    s.write_file("/empty", b"").await;
    let mut binary = noise(3 * BS + 10, 1);
    binary[5] = 0;
    s.write_file("/bin.dat", &binary).await;
    s.write_file("/big", &noise(40 * BS + 123, 2)).await;
    // Sparse: data in blocks 0, 10 and 25 only.
    s.write_file("/sparse", b"head").await;
    pwrite_path(s, "/sparse", 10 * BS as u64 + 7, b"middle").await;
    pwrite_path(s, "/sparse", 25 * BS as u64, &noise(BS, 3)).await;
    s.write_file("/script.sh", b"#!/bin/sh\necho hi\n").await;
    s.chmod("/script.sh", 0o755).await;
    s.write_file("/secret", b"s3cr3t").await;
    s.chmod("/secret", 0o600).await;
    s.chown("/secret", 1000, 1000).await;
    s.chmod("/a/b", 0o1777).await;
    s.write_file("/a/b/c/deep.txt", b"deep\n").await;
    set_mtime(s, "/docs/crlf.txt", Timestamp(1_000_000_000)).await;
    set_mtime(s, "/a/b/c/deep.txt", Timestamp(42)).await;
    symlink(s, "/link", "docs/crlf.txt").await;
    symlink(s, "/dangling", "/nowhere/at/all").await;
    hard_link(s, "/bin.dat", "/docs/bin-link").await;
    hard_link(s, "/bin.dat", "/a/bin-link").await;
    let docs = s.ino("/docs").await;
    s.volume
        .mknod(&root, docs, b"fifo", libc::S_IFIFO | 0o640, 0)
        .await
        .expect("mknod");
    set_xattr(s, "/bin.dat", "user.kind", b"binary").await;
    set_xattr(s, "/bin.dat", "user.empty", b"").await;
    set_xattr(s, "/docs", "user.dir", &[0, 1, 2, 255]).await;
    set_xattr(s, "/", "user.root", b"r").await;
}

/// Change every part of the rich tree: content, size, names, modes, owners, xattrs, links.
async fn mutate_rich_tree(s: &TestVolume) {
    s.write_file("/docs/crlf.txt", b"first line\r\nchanged\r\n")
        .await;
    pwrite_path(s, "/docs/no-newline.txt", 19, b"... now with one\n").await;
    unlink(s, "/docs/lone-newline.txt").await;
    s.write_file("/docs/latin1.txt", b"utf-8 now: caf\xc3\xa9\n")
        .await;
    s.write_file("/empty", b"not empty any more").await;
    pwrite_path(s, "/bin.dat", 100, &[0xAA; 50]).await;
    truncate(s, "/big", 7 * BS as u64 + 1).await;
    pwrite_path(s, "/big", 30 * BS as u64, b"beyond").await;
    pwrite_path(s, "/sparse", 5 * BS as u64, b"filled a hole").await;
    truncate(s, "/sparse", 12 * BS as u64).await;
    s.chmod("/script.sh", 0o644).await;
    s.chown("/secret", 2000, 2000).await;
    s.chmod("/a/b", 0o755).await;
    let deep = s.ino("/a/b/c").await;
    let (dir, name) = s.parent("/a/b/c/deep.txt").await;
    assert_eq!(dir, deep);
    s.volume
        .unlink(&Caller::root(), dir, &name)
        .await
        .expect("unlink deep");
    let (b, c) = s.parent("/a/b/c").await;
    s.volume
        .rmdir(&Caller::root(), b, &c)
        .await
        .expect("rmdir c");
    rename(s, "/docs", "/documents").await;
    unlink(s, "/link").await;
    symlink(s, "/link", "elsewhere").await;
    unlink(s, "/a/bin-link").await;
    set_xattr(s, "/bin.dat", "user.kind", b"changed").await;
    let bin = s.ino("/bin.dat").await;
    s.volume
        .removexattr(&Caller::root(), bin, b"user.empty")
        .await
        .expect("removexattr");
    set_xattr(s, "/documents", "user.new", b"n").await;
    s.mkdir_p("/new/dir").await;
    s.write_file("/new/dir/file", &noise(2 * BS, 9)).await;
    set_mtime(s, "/a", Timestamp(0)).await;
}

fn text(change: &tarbox_fs::Change) -> (usize, usize, &str) {
    match &change.content {
        Some(ContentDiff::Text {
            added_lines,
            removed_lines,
            unified,
        }) => (*added_lines, *removed_lines, unified.as_str()),
        other => panic!("{}: expected a text diff, got {other:?}", change.path),
    }
}

fn change<'d>(diff: &'d LayerDiff, path: &str) -> &'d tarbox_fs::Change {
    diff.changes
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("no change at {path} in {:#?}", diff.changes))
}

fn kinds(diff: &LayerDiff) -> Vec<(ChangeKind, String)> {
    diff.changes
        .iter()
        .map(|c| (c.kind, c.path.clone()))
        .collect()
}

backend_tests! {
    async fn switching_back_restores_the_checkpointed_tree_exactly(t: TestVolume) {
        let s = small_blocks(&t).await;
        build_rich_tree(&s).await;
        let before = snapshot(&s.volume).await;
        assert_eq!(before["/bin.dat"].attr.nlink, 3);
        assert_eq!(before["/sparse"].attr.size, 26 * BS as u64);
        checkpoint(&s, "before").await;
        assert_same_tree(&snapshot(&s.volume).await, &before, "right after the checkpoint");

        mutate_rich_tree(&s).await;
        let after = snapshot(&s.volume).await;
        assert_ne!(after, before);
        assert!(!after.contains_key("/docs/crlf.txt"));
        assert_eq!(after["/bin.dat"].attr.nlink, 2);

        let left = s.volume.layers().current();
        switch(&s, "before").await;
        let restored = snapshot(&s.volume).await;
        assert_same_tree(&restored, &before, "after switching back");
        // Spot checks of what the snapshot compares, with the expected bytes spelled out.
        assert_eq!(s.read_file("/docs/crlf.txt").await, b"first line\r\nsecond line\r\n");
        assert_eq!(s.read_file("/docs/lone-newline.txt").await, b"\n");
        assert_eq!(s.read_file("/docs/latin1.txt").await, b"caf\xe9 \xff\xfe na\xefve\n");
        assert_eq!(s.read_file("/big").await, noise(40 * BS + 123, 2));
        let sparse = s.read_file("/sparse").await;
        assert_eq!(&sparse[..4], b"head");
        assert!(sparse[4..10 * BS + 7].iter().all(|&b| b == 0), "holes read as zeros");
        assert_eq!(&sparse[10 * BS + 7..10 * BS + 13], b"middle");
        assert!(sparse[10 * BS + 13..25 * BS].iter().all(|&b| b == 0), "holes read as zeros");
        assert_eq!(s.stat("/docs/crlf.txt").await.mtime, Timestamp(1_000_000_000));
        assert_eq!(s.stat("/script.sh").await.perm, 0o755);
        let secret = s.stat("/secret").await;
        assert_eq!((secret.perm, secret.uid, secret.gid), (0o600, 1000, 1000));
        assert_eq!(s.stat("/a/bin-link").await.nlink, 3);
        assert_eq!(s.volume.readlink(&Caller::root(), s.ino("/link").await).await.expect("readlink"), b"docs/crlf.txt");
        assert_eq!(s.ls_sorted("/a/b/c").await, ["deep.txt"]);
        assert_errno!(s.resolve("/documents").await, libc::ENOENT);
        assert_errno!(s.resolve("/new").await, libc::ENOENT);

        // Roll forward: the layer left is still listed and brings the changed tree back.
        let layers = tree(&s).await;
        let old = layers.get(left).expect("the layer left by the switch is still listed");
        assert!(old.frozen_at.is_some());
        assert_eq!(old.name, None);
        switch(&s, &id_ref(left)).await;
        assert_same_tree(&snapshot(&s.volume).await, &after, "after rolling forward");
        // And back again, by name.
        switch(&s, "before").await;
        assert_same_tree(&snapshot(&s.volume).await, &before, "after rolling back again");

        // Folding the checkpoint into both its children changes neither.
        s.volume.layers().drop_layer(&LayerRef::from("before"), true).await.expect("drop with force");
        assert_same_tree(&snapshot(&s.volume).await, &before, "the head after the drop");
        let left_view = travel(&s, &id_ref(left)).await;
        assert_same_tree(&snapshot(&left_view).await, &after, "the left layer after the drop");
        let pinned = s.volume.layers().view(&LayerRef::Id(left)).await.expect("pinned");
        assert_same_tree(&snapshot(&pinned).await, &after, "a pinned view of the left layer");
    }

    async fn writing_after_a_switch_starts_a_branch(t: TestVolume) {
        t.write_file("/f", b"v1").await;
        let c1 = checkpoint(&t, "c1").await;
        t.write_file("/f", b"v2").await;
        let main_line = t.volume.layers().current();
        let head = switch(&t, "c1").await;
        assert_eq!(t.volume.layers().current(), head);
        let layers = tree(&t).await;
        assert_eq!(layers.head, head);
        assert_eq!(layers.get(head).and_then(|l| l.parent), Some(c1));
        assert_eq!(layers.children(c1).len(), 2, "{}", layers.render());
        // Writing on the branch does not touch the main line.
        t.write_file("/f", b"branch").await;
        t.write_file("/g", b"only on the branch").await;
        let branch = checkpoint(&t, "branch").await;
        assert_eq!(branch, head);
        switch(&t, &id_ref(main_line)).await;
        assert_eq!(t.read_file("/f").await, b"v2");
        assert_errno!(t.resolve("/g").await, libc::ENOENT);
        switch(&t, "branch").await;
        assert_eq!(t.read_file("/f").await, b"branch");
        assert_eq!(t.read_file("/g").await, b"only on the branch");
        // Layers are found by name, by id and by #id.
        let layers = tree(&t).await;
        assert_eq!(layers.find(&LayerRef::from("branch")).map(|l| l.id), Some(branch));
        assert_eq!(layers.find(&LayerRef::from(&branch.to_string())).map(|l| l.id), Some(branch));
        assert_eq!(layers.find(&LayerRef::from(&id_ref(branch))).map(|l| l.id), Some(branch));
        assert!(layers.render().contains("branch (#"), "{}", layers.render());
        assert!(layers.render().contains("* (current)"), "{}", layers.render());
        assert_eq!(layers.summaries().iter().filter(|s| s.current).count(), 1);
    }

    async fn switching_to_the_current_layer_changes_nothing(t: TestVolume) {
        t.write_file("/f", b"x").await;
        let head = t.volume.layers().current();
        let before = ids(&tree(&t).await);
        assert_eq!(switch(&t, &id_ref(head)).await, head);
        assert_eq!(t.volume.layers().current(), head);
        assert_eq!(ids(&tree(&t).await), before);
        assert_eq!(t.read_file("/f").await, b"x");
    }

    async fn an_empty_unnamed_head_is_not_kept_by_a_switch(t: TestVolume) {
        t.write_file("/f", b"x").await;
        checkpoint(&t, "a").await;
        checkpoint(&t, "b").await;
        let empty_head = t.volume.layers().current();
        switch(&t, "a").await;
        let layers = tree(&t).await;
        assert!(layers.get(empty_head).is_none(), "an unnamed layer holding nothing is not kept:\n{}", layers.render());
        assert_eq!(names(&layers), ["a", "b"]);
        // A head holding changes is kept.
        t.write_file("/g", b"y").await;
        let busy_head = t.volume.layers().current();
        switch(&t, "b").await;
        assert!(tree(&t).await.get(busy_head).is_some());
    }

    async fn checkpoints_record_what_listings_show(t: TestVolume) {
        let base = t.volume.layers().current();
        t.write_file("/f", &[1; 10_000]).await;
        let usage = t.usage().await;
        let record = t.volume.layers().checkpoint("first", "the first one").await.expect("checkpoint");
        assert_eq!(record.id, base);
        assert_eq!(record.name.as_deref(), Some("first"));
        assert_eq!(record.description, "the first one");
        assert!(record.frozen_at.is_some());
        assert_eq!(record.usage, Some(usage));
        let layers = tree(&t).await;
        let head = layers.current().expect("a head");
        assert_ne!(head.id, base);
        assert_eq!(head.parent, Some(base));
        assert_eq!(head.name, None);
        assert_eq!(head.frozen_at, None);
        assert_eq!(layers.chain(head.id), [head.id, base]);
        let summary = layers.summaries().into_iter().find(|s| s.id == base.0).expect("summary");
        assert_eq!(summary.name.as_deref(), Some("first"));
        assert!(!summary.current);
        assert_eq!(summary.children, 1);
        assert_eq!(summary.usage, Some(usage));
        // Checkpoints of an unchanged tree are allowed and show the same tree.
        checkpoint(&t, "second").await;
        assert_eq!(names(&tree(&t).await), ["first", "second"]);
        assert_eq!(read_path(&travel(&t, "second").await, "/f").await.expect("read"), vec![1; 10_000]);
    }

    async fn a_checkpoint_includes_buffered_writes(t: TestVolume) {
        let root = Caller::root();
        let (_, fh) = t.volume.create(&root, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");
        t.volume.write(&root, fh, 0, b"buffered").await.expect("write");
        checkpoint(&t, "c").await;
        t.volume.write(&root, fh, 8, b" and later").await.expect("write");
        t.volume.release(&root, fh).await.expect("release");
        assert_eq!(t.read_file("/f").await, b"buffered and later");
        assert_eq!(read_path(&travel(&t, "c").await, "/f").await.expect("read"), b"buffered");
    }

    async fn time_travel_reads_a_checkpoint_while_the_head_moves_on(t: TestVolume) {
        let root = Caller::root();
        t.write_file("/f", b"version 1\n").await;
        t.write_file("/doomed", b"still here").await;
        t.mkdir_p("/d").await;
        let c = checkpoint(&t, "v1").await;
        let old = travel(&t, "v1").await;
        assert!(old.is_read_only());
        assert!(old.is_pinned());
        assert_eq!(old.layers().current(), c);
        let old_tree = snapshot(&old).await;

        t.write_file("/f", b"version 2, longer\n").await;
        t.write_file("/g", b"new").await;
        unlink(&t, "/doomed").await;
        checkpoint(&t, "v2").await;
        t.write_file("/f", b"version 3\n").await;

        assert_eq!(read_path(&old, "/f").await.expect("read"), b"version 1\n");
        assert_eq!(read_path(&old, "/doomed").await.expect("read"), b"still here");
        assert_errno!(lookup(&old, "/g").await, libc::ENOENT);
        assert_same_tree(&snapshot(&old).await, &old_tree, "the time-travel view");
        // By id too, and on a later checkpoint.
        let by_id = travel(&t, &id_ref(c)).await;
        assert_eq!(read_path(&by_id, "/f").await.expect("read"), b"version 1\n");
        let v2 = travel(&t, "v2").await;
        assert_eq!(read_path(&v2, "/f").await.expect("read"), b"version 2, longer\n");
        assert_errno!(lookup(&v2, "/doomed").await, libc::ENOENT);
        assert_eq!(t.read_file("/f").await, b"version 3\n");

        // Every change through the view fails with EROFS; nothing leaks into either tree.
        let f = lookup(&old, "/f").await.expect("lookup").ino;
        let d = lookup(&old, "/d").await.expect("lookup").ino;
        assert_errno!(old.create(&root, Ino::ROOT, b"x", 0o644, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(old.open(&root, f, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(old.open(&root, f, libc::O_RDWR).await, libc::EROFS);
        assert_errno!(old.mkdir(&root, Ino::ROOT, b"x", 0o755).await, libc::EROFS);
        assert_errno!(old.unlink(&root, Ino::ROOT, b"f").await, libc::EROFS);
        assert_errno!(old.rmdir(&root, Ino::ROOT, b"d").await, libc::EROFS);
        assert_errno!(old.rename(&root, Ino::ROOT, b"f", d, b"f", PLAIN).await, libc::EROFS);
        assert_errno!(old.link(&root, f, d, b"l").await, libc::EROFS);
        assert_errno!(old.symlink(&root, Ino::ROOT, b"s", b"f").await, libc::EROFS);
        assert_errno!(old.setattr(&root, f, &SetAttr { mode: Some(0o600), ..SetAttr::default() }).await, libc::EROFS);
        assert_errno!(old.setattr(&root, f, &SetAttr { size: Some(0), ..SetAttr::default() }).await, libc::EROFS);
        assert_errno!(old.setxattr(&root, f, b"user.x", b"1", XattrMode::Any).await, libc::EROFS);
        assert_errno!(old.layers().checkpoint("from-the-past", "").await, libc::EROFS);
        assert_errno!(old.layers().switch_to(&LayerRef::from("v2")).await, libc::EROFS);
        assert_errno!(old.layers().drop_layer(&LayerRef::from("v2"), true).await, libc::EROFS);
        assert_eq!(old.layers().auto_checkpoint().await.expect("auto_checkpoint"), None);
        assert_same_tree(&snapshot(&old).await, &old_tree, "the time-travel view after refused writes");
        assert_eq!(t.ls_sorted("/").await, ["d", "f", "g"]);

        assert_errno!(time_travel(&t, "no-such-checkpoint").await, libc::ENOENT);
        assert_errno!(time_travel(&t, "#999999999").await, libc::ENOENT);
    }

    async fn deletes_in_a_newer_layer_hide_but_do_not_destroy(t: TestVolume) {
        let s = small_blocks(&t).await;
        let root = Caller::root();
        s.mkdir_p("/keep/sub").await;
        let data = noise(20 * BS + 5, 4);
        s.write_file("/keep/sub/data", &data).await;
        s.write_file("/keep/note", b"note\n").await;
        let before = snapshot(&s.volume).await;
        checkpoint(&s, "c").await;

        for path in ["/keep/sub/data", "/keep/note"] {
            unlink(&s, path).await;
        }
        let keep = s.ino("/keep").await;
        s.volume.rmdir(&root, keep, b"sub").await.expect("rmdir sub");
        s.volume.rmdir(&root, Ino::ROOT, b"keep").await.expect("rmdir keep");
        assert_errno!(s.resolve("/keep").await, libc::ENOENT);
        assert!(s.ls_sorted("/").await.is_empty());
        // Recreating the names makes new, different files.
        s.mkdir_p("/keep/sub").await;
        s.write_file("/keep/sub/data", b"impostor").await;

        let old = travel(&s, "c").await;
        assert_eq!(read_path(&old, "/keep/sub/data").await.expect("read"), data);
        switch(&s, "c").await;
        assert_same_tree(&snapshot(&s.volume).await, &before, "after switching back");
        assert_eq!(s.read_file("/keep/sub/data").await, data);
    }

    async fn layer_names_and_targets_are_checked(t: TestVolume) {
        t.write_file("/f", b"x").await;
        checkpoint(&t, "taken").await;
        let before = ids(&tree(&t).await);
        assert_errno!(t.volume.layers().checkpoint("taken", "").await, libc::EEXIST);
        let long = "x".repeat(256);
        for bad in ["", "a/b", "12", "#12", ".", "..", " lead", "trail ", "bell\u{7}", "new\nline", long.as_str()] {
            assert_errno!(t.volume.layers().checkpoint(bad, "").await, libc::EINVAL);
        }
        assert!(t.volume.layers().checkpoint(&"y".repeat(255), "").await.is_ok(), "255 bytes is the limit");
        assert!(t.volume.layers().checkpoint("v1.2 rc-3_ünïcødé", "").await.is_ok());
        assert_eq!(names(&tree(&t).await), ["taken", &"y".repeat(255), "v1.2 rc-3_ünïcødé"]);
        let after = ids(&tree(&t).await);
        assert_eq!(after.len(), before.len() + 2, "refused checkpoints leave no layer behind");

        assert_errno!(t.volume.layers().switch_to(&LayerRef::from("nope")).await, libc::ENOENT);
        assert_errno!(t.volume.layers().switch_to(&LayerRef::from("#999999999")).await, libc::ENOENT);
        assert_errno!(t.volume.layers().switch_to(&LayerRef::from("999999999")).await, libc::ENOENT);
        assert_errno!(t.volume.layers().drop_layer(&LayerRef::from("nope"), false).await, libc::ENOENT);
        assert_errno!(t.volume.layers().drop_layer(&LayerRef::from("nope"), true).await, libc::ENOENT);
        assert_errno!(t.volume.layers().drop_layer(&LayerRef::from("#999999999"), true).await, libc::ENOENT);
        // The current layer cannot be dropped, even with force.
        let head = id_ref(t.volume.layers().current());
        assert_errno!(t.volume.layers().drop_layer(&LayerRef::from(&head), false).await, libc::EBUSY);
        assert_errno!(t.volume.layers().drop_layer(&LayerRef::from(&head), true).await, libc::EBUSY);
        // A layer others are built on needs force.
        assert_errno!(t.volume.layers().drop_layer(&LayerRef::from("taken"), false).await, libc::EBUSY);
        assert_eq!(ids(&tree(&t).await), after, "refused changes leave the tree as it was");
        assert_eq!(t.read_file("/f").await, b"x");
        // A dropped name is free again.
        t.volume.layers().drop_layer(&LayerRef::from("taken"), true).await.expect("drop with force");
        checkpoint(&t, "taken").await;
    }

    async fn dropping_with_force_folds_into_every_child(t: TestVolume) {
        let s = small_blocks(&t).await;
        // c0 (the base layer) -> c1 -> c2 -> (main head), and c1 -> c3 -> (branch head)
        s.write_file("/base-file", b"from the base").await;
        s.write_file("/a", b"a0").await;
        let base = checkpoint(&s, "c0").await;
        assert_eq!(tree(&s).await.get(base).map(|l| l.parent), Some(None));
        s.write_file("/shared", &noise(5 * BS, 1)).await;
        s.write_file("/a", b"a1").await;
        s.mkdir_p("/dir").await;
        set_xattr(&s, "/dir", "user.v", b"1").await;
        checkpoint(&s, "c1").await;
        s.write_file("/a", b"a2").await;
        s.write_file("/b", &noise(3 * BS, 2)).await;
        unlink(&s, "/shared").await;
        set_xattr(&s, "/dir", "user.v", b"2").await;
        checkpoint(&s, "c2").await;
        s.write_file("/a", b"a3").await;
        let main_head = s.volume.layers().current();
        let main_tree = snapshot(&s.volume).await;
        switch(&s, "c1").await;
        pwrite_path(&s, "/shared", 10, b"branch edit").await;
        s.write_file("/c", b"c3").await;
        checkpoint(&s, "c3").await;
        s.write_file("/c", b"branch head").await;
        let branch_head = s.volume.layers().current();

        let c2_tree = snapshot(&travel(&s, "c2").await).await;
        let c3_tree = snapshot(&travel(&s, "c3").await).await;
        let main_frozen = snapshot(&travel(&s, &id_ref(main_head)).await).await;
        assert_same_tree(&main_frozen, &main_tree, "the main line's head, frozen by the switch");
        let head_tree = snapshot(&s.volume).await;
        let usage = s.usage().await;

        assert_errno!(s.volume.layers().drop_layer(&LayerRef::from("c1"), false).await, libc::EBUSY);
        s.volume.layers().drop_layer(&LayerRef::from("c1"), true).await.expect("drop c1 with force");
        let layers = tree(&s).await;
        assert!(layers.find(&LayerRef::from("c1")).is_none(), "{}", layers.render());
        assert_eq!(layers.find(&LayerRef::from("c2")).and_then(|l| l.parent), Some(base));
        assert_eq!(layers.find(&LayerRef::from("c3")).and_then(|l| l.parent), Some(base));
        assert_errno!(time_travel(&s, "c1").await, libc::ENOENT);
        assert_errno!(s.volume.layers().switch_to(&LayerRef::from("c1")).await, libc::ENOENT);

        // Nothing else changed what it shows.
        assert_same_tree(&snapshot(&s.volume).await, &head_tree, "the head after the drop");
        assert_eq!(s.usage().await, usage);
        assert_same_tree(&snapshot(&travel(&s, "c2").await).await, &c2_tree, "c2 after dropping c1");
        assert_same_tree(&snapshot(&travel(&s, "c3").await).await, &c3_tree, "c3 after dropping c1");
        switch(&s, "c2").await;
        assert_same_tree(&snapshot(&s.volume).await, &c2_tree, "switched to c2");
        switch(&s, &id_ref(main_head)).await;
        assert_same_tree(&snapshot(&s.volume).await, &main_tree, "switched to the main line");

        // Even the base layer can be folded away.
        s.volume.layers().drop_layer(&LayerRef::from("c0"), true).await.expect("drop the base layer");
        let layers = tree(&s).await;
        assert!(layers.get(base).is_none());
        assert_eq!(layers.find(&LayerRef::from("c2")).map(|l| l.parent), Some(None));
        assert_same_tree(&snapshot(&s.volume).await, &main_tree, "after dropping the base");
        assert_same_tree(&snapshot(&travel(&s, "c3").await).await, &c3_tree, "c3 after dropping the base");
        switch(&s, "c2").await;
        assert_same_tree(&snapshot(&s.volume).await, &c2_tree, "c2 after dropping the base");

        // Leaves drop without force and disappear: the branch's head, left by a switch, then c3.
        assert_errno!(s.volume.layers().drop_layer(&LayerRef::from("c3"), false).await, libc::EBUSY);
        s.volume
            .layers().drop_layer(&LayerRef::from(id_ref(branch_head)), false)
            .await
            .expect("drop the branch's head");
        s.volume.layers().drop_layer(&LayerRef::from("c3"), false).await.expect("drop the leaf c3");
        let layers = tree(&s).await;
        assert!(layers.find(&LayerRef::from("c3")).is_none(), "{}", layers.render());
        assert_errno!(time_travel(&s, "c3").await, libc::ENOENT);
        assert_same_tree(&snapshot(&s.volume).await, &c2_tree, "c2 after dropping c3");

        // What the store holds, read without any engine's caches.
        let (engine, fresh) = uncached(&s, None).await;
        assert_same_tree(&snapshot(&fresh).await, &c2_tree, "the head, read from the store");
        let (travel_engine, fresh_main) = uncached(&s, Some(&id_ref(main_head))).await;
        assert_same_tree(&snapshot(&fresh_main).await, &main_tree, "the main line, read from the store");
        engine.close().await.expect("close");
        travel_engine.close().await.expect("close");
    }

    async fn dropping_a_leaf_keeps_every_other_layer(t: TestVolume) {
        t.write_file("/f", b"one").await;
        checkpoint(&t, "one").await;
        t.write_file("/f", b"two").await;
        checkpoint(&t, "two").await;
        t.write_file("/f", b"three").await;
        let head = t.volume.layers().current();
        switch(&t, "one").await;
        let before: Vec<LayerId> = ids(&tree(&t).await);
        // The main line's head, left by the switch, is a leaf.
        t.volume.layers().drop_layer(&LayerRef::from(id_ref(head)), false).await.expect("drop the left head");
        let after = ids(&tree(&t).await);
        assert_eq!(after.len(), before.len() - 1);
        assert!(!after.contains(&head));
        assert_eq!(read_path(&travel(&t, "two").await, "/f").await.expect("read"), b"two");
        assert_eq!(t.read_file("/f").await, b"one");
        assert_errno!(t.volume.layers().switch_to(&LayerRef::from(id_ref(head))).await, libc::ENOENT);
    }

    async fn usage_follows_the_tree(t: TestVolume) {
        let s = t.new_tenant(TenantOptions {
            quota: Quota { bytes: Some(MIB as u64 * 3 / 2), inodes: None },
            ..TenantOptions::default()
        }).await;
        let empty = s.usage().await;
        s.write_file("/big", &noise(MIB, 5)).await;
        let full = s.usage().await;
        assert_eq!(full.bytes, empty.bytes + MIB as u64);
        assert_eq!(full.inodes, empty.inodes + 1);
        checkpoint(&s, "with-big").await;
        assert_eq!(s.usage().await, full, "a checkpoint costs no quota");
        unlink(&s, "/big").await;
        assert_eq!(s.usage().await, empty, "usage counts the live tree");
        // The freed quota is usable although the checkpoint still holds the data.
        s.write_file("/other", &noise(MIB, 6)).await;
        let other = s.usage().await;
        assert_eq!(other.bytes, empty.bytes + MIB as u64);
        let deleted_head = s.volume.layers().current();

        switch(&s, "with-big").await;
        assert_eq!(s.usage().await, full, "usage is the target's again");
        assert_eq!(s.volume.usage().await.expect("usage").0, full);
        assert_eq!(s.read_file("/big").await, noise(MIB, 5));
        assert_errno!(s.resolve("/other").await, libc::ENOENT);
        // Over quota on this tree as on any other.
        assert_errno!(s.write_file_as(&Caller::root(), "/more", &noise(MIB, 7), 0o644).await, libc::ENOSPC);

        switch(&s, &id_ref(deleted_head)).await;
        assert_eq!(s.usage().await, other);
        assert_eq!(s.read_file("/other").await, noise(MIB, 6));
        switch(&s, "with-big").await;
        assert_eq!(s.usage().await, full);

        // Dropping layers changes no tree, so no usage; what is left stays readable.
        s.volume.layers().drop_layer(&LayerRef::from(id_ref(deleted_head)), false).await.expect("drop the abandoned head");
        assert_eq!(s.usage().await, full);
        s.volume.layers().drop_layer(&LayerRef::from("with-big"), true).await.expect("drop the checkpoint under the head");
        assert_eq!(s.usage().await, full);
        assert_eq!(s.read_file("/big").await, noise(MIB, 5));
        let (engine, fresh) = uncached(&s, None).await;
        assert_eq!(read_path(&fresh, "/big").await.expect("read from the store"), noise(MIB, 5));
        engine.close().await.expect("close");
        unlink(&s, "/big").await;
        assert_eq!(s.usage().await, empty);
    }

    async fn open_handles_read_the_new_tree_after_a_switch(t: TestVolume) {
        let s = small_blocks(&t).await;
        let root = Caller::root();
        s.write_file("/f", b"old content").await;
        s.write_file("/g", &noise(3 * BS, 1)).await;
        checkpoint(&s, "old").await;
        s.write_file("/f", b"new content, longer than before").await;
        truncate(&s, "/g", 10).await;
        let f = s.ino("/f").await;
        let g = s.ino("/g").await;
        let fh = s.volume.open(&root, f, libc::O_RDWR).await.expect("open f");
        let gh = s.volume.open(&root, g, libc::O_RDONLY).await.expect("open g");
        assert_eq!(&s.volume.read(&root, fh, 0, 100).await.expect("read")[..], b"new content, longer than before");
        assert_eq!(s.volume.read(&root, gh, 0, 100).await.expect("read").len(), 10);
        // A buffered write, not yet flushed: the switch flushes it into the layer it leaves.
        s.volume.write(&root, fh, 0, b"BUFFERED").await.expect("write");
        let left = s.volume.layers().current();

        switch(&s, "old").await;
        assert_eq!(&s.volume.read(&root, fh, 0, 100).await.expect("read f")[..], b"old content");
        assert_eq!(s.volume.read(&root, gh, 0, 4 * BS as u32).await.expect("read g").to_vec(), noise(3 * BS, 1));
        assert_eq!(s.volume.getattr(&root, f).await.expect("getattr").size, 11);
        // Writing through the old handle writes the new tree.
        s.volume.write(&root, fh, 0, b"N").await.expect("write");
        s.volume.release(&root, fh).await.expect("release");
        s.volume.release(&root, gh).await.expect("release");
        assert_eq!(s.read_file("/f").await, b"Nld content");
        let branch = s.volume.layers().current();

        switch(&s, &id_ref(left)).await;
        assert_eq!(s.read_file("/f").await, b"BUFFEREDent, longer than before");
        assert_eq!(s.read_file("/g").await, noise(10, 1));
        switch(&s, &id_ref(branch)).await;
        assert_eq!(s.read_file("/f").await, b"Nld content");
    }

    async fn another_volume_follows_a_switch(t: TestVolume) {
        t.write_file("/f", b"before").await;
        checkpoint(&t, "c").await;
        t.write_file("/f", b"after!").await;
        let other = t.reopen().await;
        assert_eq!(read_path(&other, "/f").await.expect("read"), b"after!");
        switch(&t, "c").await;
        // Another mount follows within its poll interval (a second).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = read_path(&other, "/f").await.expect("read");
            if seen == b"before" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the other volume still reads {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its writes land in the new head.
        let root = Caller::root();
        let (_, fh) = other.create(&root, Ino::ROOT, b"g", 0o644, libc::O_WRONLY).await.expect("create");
        other.write(&root, fh, 0, b"from the other").await.expect("write");
        other.release(&root, fh).await.expect("release");
        assert_eq!(t.read_file("/g").await, b"from the other");
        assert_eq!(t.read_file("/f").await, b"before");
    }

    async fn diff_reports_each_kind_of_change(t: TestVolume) {
        t.write_file("/mod.txt", b"a\nb\nc\n").await;
        t.write_file("/del.txt", b"gone\n").await;
        t.write_file("/ren-old.txt", b"same content\n").await;
        t.write_file("/script.sh", b"#!/bin/sh\n").await;
        t.write_file("/same.txt", b"untouched\n").await;
        t.write_file("/editor.txt", b"one\ntwo\nthree\n").await;
        t.write_file("/crlf.txt", b"x\r\ny\r\n").await;
        let mut bin = noise(5000, 1);
        bin[0] = 0;
        t.write_file("/bin.dat", &bin).await;
        t.mkdir_p("/olddir").await;
        t.write_file("/olddir/inside", b"i\n").await;
        checkpoint(&t, "c").await;
        assert!(t.volume.layers().diff_current().await.expect("diff").changes.is_empty(), "nothing changed yet");

        t.write_file("/mod.txt", b"a\nB\nc\nd\n").await;
        unlink(&t, "/del.txt").await;
        rename(&t, "/ren-old.txt", "/ren-new.txt").await;
        t.chmod("/script.sh", 0o755).await;
        let mut bin2 = noise(7000, 2);
        bin2[10] = 0;
        t.write_file("/bin.dat", &bin2).await;
        t.write_file("/new.txt", b"hello\n").await;
        t.mkdir_p("/newdir").await;
        t.write_file("/newdir/file", b"f\n").await;
        // Editor-style save: a new file renamed over the original.
        t.write_file("/.editor.txt.swp", b"one\n2\nthree\n").await;
        rename(&t, "/.editor.txt.swp", "/editor.txt").await;
        t.write_file("/crlf.txt", b"x\r\nz\r\n").await;
        unlink(&t, "/olddir/inside").await;
        t.volume.rmdir(&Caller::root(), Ino::ROOT, b"olddir").await.expect("rmdir");

        let head = id_ref(t.volume.layers().current());
        let diff = t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from(&head)).await.expect("diff");
        assert_eq!(diff, t.volume.layers().diff_current().await.expect("diff_current"));
        assert!(diff.from.starts_with("c (#"), "{}", diff.from);
        assert_eq!(diff.to, head);
        assert_eq!(kinds(&diff), expect_kinds(&[
            (ChangeKind::Modified, "/bin.dat"),
            (ChangeKind::Modified, "/crlf.txt"),
            (ChangeKind::Deleted, "/del.txt"),
            (ChangeKind::Modified, "/editor.txt"),
            (ChangeKind::Modified, "/mod.txt"),
            (ChangeKind::Added, "/new.txt"),
            (ChangeKind::Added, "/newdir"),
            (ChangeKind::Added, "/newdir/file"),
            (ChangeKind::Deleted, "/olddir"),
            (ChangeKind::Deleted, "/olddir/inside"),
            (ChangeKind::Renamed, "/ren-new.txt"),
            (ChangeKind::Metadata, "/script.sh"),
        ]), "{}", diff.render());

        let m = change(&diff, "/mod.txt");
        let (added, removed, unified) = text(m);
        assert_eq!((added, removed), (2, 1), "{unified}");
        assert!(unified.contains("--- a/mod.txt") && unified.contains("+++ b/mod.txt"), "{unified}");
        for line in ["-b\n", "+B\n", "+d\n", " a\n", " c\n"] {
            assert!(unified.lines().any(|l| format!("{l}\n") == line), "{line:?} missing from\n{unified}");
        }
        assert_eq!((m.old_size, m.new_size), (Some(6), Some(8)));
        assert!(m.metadata.is_empty(), "{:?}", m.metadata);
        assert_eq!(m.file_type, FileType::Regular);

        let (added, removed, unified) = text(change(&diff, "/crlf.txt"));
        assert_eq!((added, removed), (1, 1));
        assert!(unified.contains("-y\r\n") && unified.contains("+z\r\n"), "{unified:?}");

        let e = change(&diff, "/editor.txt");
        assert_eq!(e.old_path, None, "an editor's save is a modification in place");
        let (added, removed, unified) = text(e);
        assert_eq!((added, removed), (1, 1));
        assert!(unified.contains("-two\n") && unified.contains("+2\n"), "{unified}");

        let r = change(&diff, "/ren-new.txt");
        assert_eq!(r.old_path.as_deref(), Some("/ren-old.txt"));
        assert_eq!(r.content, None, "renamed without a content change");
        assert_eq!((r.old_size, r.new_size), (Some(13), Some(13)));

        let meta = change(&diff, "/script.sh");
        assert_eq!(meta.metadata, ["mode 644 -> 755"]);
        assert_eq!(meta.content, None);

        let b = change(&diff, "/bin.dat");
        assert_eq!(b.content, Some(ContentDiff::Binary { old_size: 5000, new_size: 7000 }));
        assert_eq!((b.old_size, b.new_size), (Some(5000), Some(7000)));

        let d = change(&diff, "/del.txt");
        assert_eq!((d.old_size, d.new_size, d.content.as_ref()), (Some(5), None, None));
        let a = change(&diff, "/new.txt");
        assert_eq!((a.old_size, a.new_size, a.content.as_ref()), (None, Some(6), None));
        assert_eq!(change(&diff, "/newdir").file_type, FileType::Directory);
        assert_eq!(change(&diff, "/olddir").file_type, FileType::Directory);

        let rendered = diff.render();
        for line in [
            "M /mod.txt (+2 -1)",
            "R /ren-old.txt -> /ren-new.txt",
            "D /del.txt",
            "A /newdir/",
            "D /olddir/",
            "m /script.sh (mode 644 -> 755)",
            "M /bin.dat (binary, 5000 -> 7000 bytes)",
        ] {
            assert!(rendered.lines().any(|l| l == line), "{line:?} missing from\n{rendered}");
        }
        assert!(rendered.starts_with(&format!("# changes from {} to {head}\n", diff.from)), "{rendered}");
        assert!(rendered.contains("--- a/mod.txt"), "{rendered}");

        // The other way round, additions and deletions swap.
        let back = t.volume.layers().diff(&LayerRef::from(&head), &LayerRef::from("c")).await.expect("reverse diff");
        assert_eq!(kinds(&back), expect_kinds(&[
            (ChangeKind::Modified, "/bin.dat"),
            (ChangeKind::Modified, "/crlf.txt"),
            (ChangeKind::Added, "/del.txt"),
            (ChangeKind::Modified, "/editor.txt"),
            (ChangeKind::Modified, "/mod.txt"),
            (ChangeKind::Deleted, "/new.txt"),
            (ChangeKind::Deleted, "/newdir"),
            (ChangeKind::Deleted, "/newdir/file"),
            (ChangeKind::Added, "/olddir"),
            (ChangeKind::Added, "/olddir/inside"),
            (ChangeKind::Renamed, "/ren-old.txt"),
            (ChangeKind::Metadata, "/script.sh"),
        ]), "{}", back.render());
        assert_eq!(text(change(&back, "/mod.txt")).0, 1);
        assert_eq!(text(change(&back, "/mod.txt")).1, 2);
        assert_eq!(change(&back, "/ren-old.txt").old_path.as_deref(), Some("/ren-new.txt"));
        assert_eq!(change(&back, "/script.sh").metadata, ["mode 755 -> 644"]);

        assert!(t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from("c")).await.expect("diff").changes.is_empty());
        assert!(t.volume.layers().diff(&LayerRef::from(&head), &LayerRef::from(&head)).await.expect("diff").changes.is_empty());
        assert_errno!(t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from("nope")).await, libc::ENOENT);
        assert_errno!(t.volume.layers().diff(&LayerRef::from("nope"), &LayerRef::from("c")).await, libc::ENOENT);

        // Right after a checkpoint the current layer holds nothing.
        checkpoint(&t, "d").await;
        let empty = t.volume.layers().diff_current().await.expect("diff_current");
        assert!(empty.changes.is_empty(), "{}", empty.render());
        let named = t.volume.layers().diff(&LayerRef::from("c"), &LayerRef::from("d")).await.expect("diff");
        assert_eq!(named.to, format!("d ({head})"));
        assert_eq!(named.changes, diff.changes, "the head, now checkpoint d, holds the same changes");
    }

    async fn diff_of_text_edge_cases_and_metadata(t: TestVolume) {
        t.write_file("/no-newline", b"last line").await;
        t.write_file("/lone", b"\n").await;
        t.write_file("/latin1", b"caf\xe9\n").await;
        t.write_file("/empty", b"").await;
        t.write_file("/owned", b"o\n").await;
        t.write_file("/xattr", b"x\n").await;
        t.write_file("/touched", b"t\n").await;
        t.write_file("/retyped", b"file\n").await;
        symlink(&t, "/link", "old-target").await;
        checkpoint(&t, "c").await;

        t.write_file("/no-newline", b"last line\n").await;
        t.write_file("/lone", b"").await;
        t.write_file("/latin1", b"caf\xe9\nna\xefve\n").await;
        t.write_file("/empty", b"now\nthree\nlines\n").await;
        t.chown("/owned", 1000, 1000).await;
        set_xattr(&t, "/xattr", "user.k", b"v").await;
        set_mtime(&t, "/touched", Timestamp(5)).await;
        unlink(&t, "/retyped").await;
        t.mkdir_p("/retyped").await;
        unlink(&t, "/link").await;
        symlink(&t, "/link", "new-target").await;

        let diff = t.volume.layers().diff_current().await.expect("diff");
        let (added, removed, unified) = text(change(&diff, "/no-newline"));
        assert_eq!((added, removed), (1, 1), "{unified}");
        assert!(unified.contains("-last line") && unified.contains("+last line\n"), "{unified}");
        let (added, removed, _) = text(change(&diff, "/lone"));
        assert_eq!((added, removed), (0, 1));
        let (added, removed, unified) = text(change(&diff, "/latin1"));
        assert_eq!((added, removed), (1, 0), "{unified}");
        let (added, removed, _) = text(change(&diff, "/empty"));
        assert_eq!((added, removed), (3, 0));
        let owned = change(&diff, "/owned");
        assert_eq!((owned.kind, owned.metadata.clone()), (ChangeKind::Metadata, vec!["owner 0:0 -> 1000:1000".to_owned()]));
        let x = change(&diff, "/xattr");
        assert_eq!((x.kind, x.metadata.clone()), (ChangeKind::Metadata, vec!["xattrs".to_owned()]));
        let touched = change(&diff, "/touched");
        assert_eq!((touched.kind, touched.metadata.clone()), (ChangeKind::Metadata, vec!["mtime".to_owned()]));
        // A file replaced by a directory of the same name: the file deleted, the directory added.
        let retyped: Vec<_> = diff
            .changes
            .iter()
            .filter(|c| c.path == "/retyped")
            .map(|c| (c.kind, c.file_type))
            .collect();
        assert_eq!(
            retyped,
            [(ChangeKind::Deleted, FileType::Regular), (ChangeKind::Added, FileType::Directory)],
            "{}",
            diff.render()
        );
        let link = change(&diff, "/link");
        assert_eq!(link.kind, ChangeKind::Modified);
        assert_eq!(link.file_type, FileType::Symlink);
        let (added, removed, unified) = text(link);
        assert_eq!((added, removed), (1, 1));
        assert!(unified.contains("-old-target") && unified.contains("+new-target"), "{unified}");
    }

    async fn diff_follows_branches(t: TestVolume) {
        t.write_file("/f", b"1\n").await;
        t.write_file("/common", b"c\n").await;
        checkpoint(&t, "c").await;
        t.write_file("/f", b"2\n").await;
        t.write_file("/main-only", b"m\n").await;
        let main = id_ref(t.volume.layers().current());
        switch(&t, "c").await;
        let current = t.volume.layers().diff_current().await.expect("diff_current");
        assert!(current.changes.is_empty(), "a fresh switch changes nothing yet: {}", current.render());
        t.write_file("/f", b"3\n").await;
        t.write_file("/branch-only", b"b\n").await;
        let branch = id_ref(t.volume.layers().current());
        assert_eq!(kinds(&t.volume.layers().diff_current().await.expect("diff_current")), expect_kinds(&[
            (ChangeKind::Added, "/branch-only"),
            (ChangeKind::Modified, "/f"),
        ]));
        let across = t.volume.layers().diff(&LayerRef::from(&main), &LayerRef::from(&branch)).await.expect("diff across branches");
        assert_eq!(kinds(&across), expect_kinds(&[
            (ChangeKind::Added, "/branch-only"),
            (ChangeKind::Modified, "/f"),
            (ChangeKind::Deleted, "/main-only"),
        ]), "{}", across.render());
        let (_, _, unified) = text(change(&across, "/f"));
        assert!(unified.contains("-2\n") && unified.contains("+3\n"), "{unified}");
        // Diffs read the layers, not the volume's view: a time-travel view gives the same.
        let view = travel(&t, "c").await;
        assert_eq!(view.layers().diff(&LayerRef::from(&main), &LayerRef::from(&branch)).await.expect("diff"), across);
    }

    async fn automatic_checkpoints(t: TestVolume) {
        assert_errno!(t.engine.set_auto_checkpoint(&t.tenant, Some(Duration::from_millis(500))).await, libc::EINVAL);
        assert_errno!(t.engine.set_auto_checkpoint("no-such-tenant", Some(Duration::from_secs(1))).await, libc::ENOENT);
        // Off by default.
        t.write_file("/f", b"x").await;
        assert_eq!(t.volume.layers().auto_checkpoint().await.expect("auto_checkpoint"), None);
        checkpoint(&t, "manual").await;

        t.engine.set_auto_checkpoint(&t.tenant, Some(Duration::from_secs(1))).await.expect("turn on");
        // An engine whose clock the test moves: 2030-01-01T00:00:00Z, long after the head began.
        let clock = ManualClock::at(Timestamp(1_893_456_000 * 1_000_000_000));
        let config = EngineConfig { clock: clock.clone(), ..EngineConfig::default() };
        let engine = Engine::with_backend(t.engine.backend().clone(), config).await.expect("engine");
        let v = engine.volume(&t.tenant).await.expect("volume");
        assert_eq!(v.layers().auto_checkpoint().await.expect("auto_checkpoint"), None, "nothing changed");

        let root = Caller::root();
        let (_, fh) = v.create(&root, Ino::ROOT, b"g", 0o644, libc::O_RDWR).await.expect("create");
        v.write(&root, fh, 0, b"first").await.expect("write");
        let first = v.layers().auto_checkpoint().await.expect("auto_checkpoint").expect("a checkpoint is due");
        assert_eq!(first.name.as_deref(), Some("auto-20300101T000000Z"));
        assert_eq!(first.description, "automatic checkpoint");
        assert_eq!(first.frozen_at, Some(clock.now()));
        // The new head began now: nothing is due, changed or not.
        assert_eq!(v.layers().auto_checkpoint().await.expect("auto_checkpoint"), None);
        // A buffered write counts as a change and is part of the checkpoint.
        v.write(&root, fh, 5, b" second").await.expect("write");
        assert_eq!(v.layers().auto_checkpoint().await.expect("auto_checkpoint"), None, "the interval has not passed");
        clock.advance(Duration::from_secs(1));
        let second = v.layers().auto_checkpoint().await.expect("auto_checkpoint").expect("a checkpoint is due");
        assert_eq!(second.name.as_deref(), Some("auto-20300101T000001Z"));
        v.release(&root, fh).await.expect("release");
        clock.advance(Duration::from_secs(5));
        assert_eq!(v.layers().auto_checkpoint().await.expect("auto_checkpoint"), None, "nothing changed");

        assert_eq!(names(&tree(&t).await), ["manual", "auto-20300101T000000Z", "auto-20300101T000001Z"]);
        assert_eq!(read_path(&travel(&t, "auto-20300101T000000Z").await, "/g").await.expect("read"), b"first");
        assert_eq!(read_path(&travel(&t, "auto-20300101T000001Z").await, "/g").await.expect("read"), b"first second");

        // Off again.
        t.engine.set_auto_checkpoint(&t.tenant, None).await.expect("turn off");
        t.write_file("/h", b"h").await;
        clock.advance(Duration::from_secs(60));
        assert_eq!(v.layers().auto_checkpoint().await.expect("auto_checkpoint"), None);
        drop(v);
        engine.close().await.expect("close");
    }

    async fn concurrent_checkpoints_and_writes_from_two_volumes(t: TestVolume) {
        let other = t.reopen().await;
        t.write_file("/f", b"base").await;
        let (mine, theirs) = (t.volume.layers(), other.layers());
        let (a, b) = tokio::join!(mine.checkpoint("same", ""), theirs.checkpoint("same", ""));
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert_errno!(loser, libc::EEXIST);

        // Writes of one volume while the other checkpoints land either in the checkpoint or
        // after it, never lost.
        let root = Caller::root();
        let writer = async {
            for i in 0..20u8 {
                let name = format!("w{i}");
                let (_, fh) = other
                    .create(&root, Ino::ROOT, name.as_bytes(), 0o644, libc::O_WRONLY)
                    .await
                    .expect("create");
                other.write(&root, fh, 0, &[i; 100]).await.expect("write");
                other.release(&root, fh).await.expect("release");
            }
        };
        let checkpointer = async {
            for i in 0..5 {
                t.volume.layers().checkpoint(&format!("c{i}"), "").await.expect("checkpoint");
            }
        };
        tokio::join!(writer, checkpointer);
        for i in 0..20u8 {
            assert_eq!(t.read_file(&format!("/w{i}")).await, vec![i; 100]);
        }
        // Each checkpoint holds a prefix of the files; the last one may have been created but
        // not yet written (its data is flushed at release, after the checkpoint).
        let mut seen = 0;
        for i in 0..5 {
            let view = travel(&t, &format!("c{i}")).await;
            let n = list_dir(&view, Ino::ROOT).await.len() - 1;
            assert!(n >= seen, "checkpoint c{i} holds {n} files, an earlier one {seen}");
            for w in 0..n {
                let data = read_path(&view, &format!("/w{w}")).await.expect("read");
                if !(w + 1 == n && data.is_empty()) {
                    assert_eq!(data, vec![w as u8; 100], "/w{w} in checkpoint c{i} of {n} files");
                }
            }
            seen = n;
        }
    }

    async fn an_unlinked_open_file_is_reclaimed_in_the_tree_its_last_handle_closes_in(t: TestVolume) {
        let root = Caller::root();
        t.write_file("/kept", b"k").await;
        let empty = t.usage().await;
        t.write_file("/tmp", &noise(100_000, 1)).await;
        let ino = t.ino("/tmp").await;
        let fh = t.volume.open(&root, ino, libc::O_RDONLY).await.expect("open");
        unlink(&t, "/tmp").await;
        assert_eq!(t.usage().await.inodes, empty.inodes + 1, "still charged while open");
        checkpoint(&t, "c").await;
        t.write_file("/later", b"l").await;
        switch(&t, "c").await;
        // The handle reads the file as the checkpoint's tree holds it, then frees it there.
        assert_eq!(t.volume.read(&root, fh, 0, 10).await.expect("read").to_vec(), noise(10, 1));
        t.volume.release(&root, fh).await.expect("release");
        assert_eq!(t.ls_sorted("/").await, ["kept"]);
        assert_eq!(t.usage().await, empty);
    }
}

/// Known bug, reported and not fixed (a fix needs the backends to leave open-but-unlinked files
/// out of the usage they freeze): a checkpoint taken while a file is unlinked but still open
/// records the file's charge. Once the handle is closed in another layer, switching back to the
/// checkpoint charges the file forever, though no name and no handle can ever reach it again.
async fn unlinked_open_file_closed_before_switching_back(t: TestVolume) {
    let root = Caller::root();
    t.write_file("/kept", b"k").await;
    let empty = t.usage().await;
    t.write_file("/tmp", &noise(100_000, 1)).await;
    let ino = t.ino("/tmp").await;
    let fh = t
        .volume
        .open(&root, ino, libc::O_RDONLY)
        .await
        .expect("open");
    unlink(&t, "/tmp").await;
    checkpoint(&t, "c").await;
    t.volume.release(&root, fh).await.expect("release");
    assert_eq!(t.usage().await, empty);
    t.write_file("/later", b"l").await;
    switch(&t, "c").await;
    assert_eq!(t.ls_sorted("/").await, ["kept"]);
    assert_eq!(
        t.usage().await,
        empty,
        "nothing holds the unlinked file in the checkpoint's tree"
    );
}

mod known_bugs {
    use tarbox_tests::TestVolume;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "known bug: switching back to a checkpoint taken while a file was unlinked but open charges that file forever"]
    async fn memory_unlinked_open_file_closed_before_switching_back() {
        let t = TestVolume::memory().await;
        let cleanup = t.cleanup_handle();
        super::unlinked_open_file_closed_before_switching_back(t).await;
        cleanup.run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "known bug: switching back to a checkpoint taken while a file was unlinked but open charges that file forever"]
    async fn postgres_unlinked_open_file_closed_before_switching_back() {
        let Some(url) = tarbox_tests::postgres_url().await else {
            return;
        };
        let t = TestVolume::open(&url).await;
        let cleanup = t.cleanup_handle();
        super::unlinked_open_file_closed_before_switching_back(t).await;
        cleanup.run().await;
    }
}

fn expect_kinds(list: &[(ChangeKind, &str)]) -> Vec<(ChangeKind, String)> {
    list.iter().map(|(k, p)| (*k, (*p).to_owned())).collect()
}
