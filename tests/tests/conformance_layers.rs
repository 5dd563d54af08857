//! Copy-on-write layers: checkpoints, switches (rollback and roll-forward), time travel, layer
//! names and automatic checkpoints. Dropping layers and usage across switches are tested in
//! `conformance_layers_drop.rs`, open handles and other volumes across switches in
//! `conformance_layers_handles.rs`, diffs in `conformance_layers_diff.rs`; the helpers they share
//! are in `layers_common/mod.rs`.
//!
//! Every test asserts what a user observes: bytes read back, `stat`, listings, errnos, the layer
//! tree as `layers()` lists it, and diffs. Trees are compared whole through [`snapshot`], which
//! walks a volume with `readdir` and records every node's attributes, content or target, and
//! extended attributes.

mod layers_common;

use std::time::Duration;

use tarbox_fs::Filesystem as _;
use tarbox_fs::LayerRef;
use tarbox_fs::{Caller, Clock, Engine, EngineConfig, Ino, SetAttr, Timestamp, XattrMode};
use tarbox_tests::{ManualClock, TestVolume, assert_errno, backend_tests, noise, small_blocks};

use layers_common::{
    BS, PLAIN, assert_same_tree, checkpoint, hard_link, id_ref, ids, lookup, names, pwrite_path,
    read_path, rename, set_mtime, set_xattr, snapshot, switch, symlink, time_travel, travel, tree,
    truncate, unlink,
};

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
}
