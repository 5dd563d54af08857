//! The front door's own behaviour on every backend: `lseek` with `SEEK_DATA`/`SEEK_HOLE`, and
//! wrappers of a [`Filesystem`]: a read-only guard, and the control directory over a guarded
//! tree, whose snapshots keep the permissions their files had.

use std::sync::Arc;

use tarbox_fs::{
    Caller, ControlFs, FileType, Filesystem, Guarded, Ino, ReadOnly, RenameFlags, SetAttr, Whence,
    XattrMode,
};
use tarbox_tests::{
    SMALL_BLOCK, TestVolume, alice, assert_errno, backend_tests, bob, small_blocks,
};

const BS: u64 = SMALL_BLOCK as u64;

/// A file with data in blocks 0 and 5 of 8, the rest holes, as `(ino, size)`.
async fn sparse(t: &TestVolume) -> (Ino, u64) {
    let me = Caller::root();
    let (attr, fh) = t
        .volume
        .create(&me, Ino::ROOT, b"sparse", 0o644, libc::O_RDWR)
        .await
        .expect("create");
    t.volume.write(&me, fh, 0, b"head").await.expect("write");
    t.volume
        .write(&me, fh, 5 * BS + 10, b"middle")
        .await
        .expect("write");
    let size = 8 * BS;
    let set = SetAttr {
        size: Some(size),
        handle: Some(fh),
        ..SetAttr::default()
    };
    t.volume.setattr(&me, attr.ino, &set).await.expect("extend");
    t.volume.release(&me, fh).await.expect("release");
    (attr.ino, size)
}

/// The data and hole boundaries `lseek` reports for the file open as `fh`.
async fn seeks(v: &dyn Filesystem, fh: tarbox_fs::FileHandle, size: u64) {
    let me = Caller::root();
    let seek = |offset, whence| v.lseek(&me, fh, offset, whence);
    assert_eq!(seek(0, Whence::Data).await.expect("data at 0"), 0);
    assert_eq!(seek(0, Whence::Hole).await.expect("hole after 0"), BS);
    assert_eq!(seek(2, Whence::Hole).await.expect("hole after 2"), BS);
    assert_eq!(seek(BS, Whence::Data).await.expect("next data"), 5 * BS);
    assert_eq!(
        seek(5 * BS + 3, Whence::Data).await.expect("inside data"),
        5 * BS + 3
    );
    assert_eq!(
        seek(5 * BS, Whence::Hole).await.expect("hole after"),
        6 * BS
    );
    assert_eq!(
        seek(3 * BS, Whence::Hole).await.expect("inside a hole"),
        3 * BS
    );
    // The tail is a hole up to the end, which counts as one.
    assert_eq!(seek(6 * BS, Whence::Hole).await.expect("tail"), 6 * BS);
    assert_errno!(seek(6 * BS, Whence::Data).await, libc::ENXIO);
    assert_errno!(seek(size, Whence::Data).await, libc::ENXIO);
    assert_errno!(seek(size, Whence::Hole).await, libc::ENXIO);
}

backend_tests! {
    async fn seek_data_and_hole_find_the_written_blocks(t: TestVolume) {
        let t = small_blocks(&t).await;
        let (ino, size) = sparse(&t).await;
        let me = Caller::root();
        // Through the volume that wrote it, and through a fresh one reading the store.
        let fh = t.volume.open(&me, ino, libc::O_RDONLY).await.expect("open");
        seeks(&t.volume, fh, size).await;
        t.volume.release(&me, fh).await.expect("release");
        let fresh = t.reopen().await;
        let fh = fresh.open(&me, ino, libc::O_RDONLY).await.expect("open");
        seeks(&fresh, fh, size).await;
        fresh.release(&me, fh).await.expect("release");
    }

    async fn seek_sees_buffered_writes(t: TestVolume) {
        let t = small_blocks(&t).await;
        let me = Caller::root();
        let (_, fh) = t
            .volume
            .create(&me, Ino::ROOT, b"f", 0o644, libc::O_RDWR)
            .await
            .expect("create");
        t.volume.write(&me, fh, 3 * BS, b"x").await.expect("write");
        assert_eq!(t.volume.lseek(&me, fh, 0, Whence::Data).await.expect("data"), 3 * BS);
        assert_eq!(t.volume.lseek(&me, fh, 0, Whence::Hole).await.expect("hole"), 0);
        t.volume.release(&me, fh).await.expect("release");
        let dir = t.volume.opendir(&me, Ino::ROOT).await.expect("opendir");
        assert!(t.volume.lseek(&me, dir, 0, Whence::Data).await.is_err());
        t.volume.releasedir(&me, dir).await.expect("releasedir");
    }

    async fn a_read_only_guard_refuses_every_change(t: TestVolume) {
        t.write_file("/f", b"data").await;
        t.mkdir_p("/d").await;
        let fs = Guarded::new(Arc::new(t.volume.clone()), ReadOnly);
        let me = Caller::root();
        let f = t.ino("/f").await;
        let d = t.ino("/d").await;
        let before = t.stat("/f").await;
        assert!(fs.is_read_only());
        // Reads pass.
        assert_eq!(fs.lookup(&me, Ino::ROOT, b"f").await.expect("lookup").ino, f);
        let fh = fs.open(&me, f, libc::O_RDONLY).await.expect("open for reading");
        assert_eq!(&fs.read(&me, fh, 0, 10).await.expect("read")[..], b"data");
        fs.release(&me, fh).await.expect("release");
        assert!(fs.access(&me, f, libc::R_OK as u32).await.is_ok());
        // Every change is EROFS, and nothing changed.
        assert_errno!(fs.open(&me, f, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(fs.open(&me, f, libc::O_RDONLY | libc::O_TRUNC).await, libc::EROFS);
        assert_errno!(fs.create(&me, Ino::ROOT, b"n", 0o644, libc::O_WRONLY).await, libc::EROFS);
        assert_errno!(fs.mkdir(&me, Ino::ROOT, b"n", 0o755).await, libc::EROFS);
        assert_errno!(fs.mknod(&me, Ino::ROOT, b"n", libc::S_IFIFO | 0o644, 0).await, libc::EROFS);
        assert_errno!(fs.symlink(&me, Ino::ROOT, b"n", b"f").await, libc::EROFS);
        assert_errno!(fs.link(&me, f, Ino::ROOT, b"n").await, libc::EROFS);
        assert_errno!(fs.unlink(&me, Ino::ROOT, b"f").await, libc::EROFS);
        assert_errno!(fs.rmdir(&me, Ino::ROOT, b"d").await, libc::EROFS);
        assert_errno!(
            fs.rename(&me, Ino::ROOT, b"f", d, b"g", RenameFlags::default()).await,
            libc::EROFS
        );
        let chmod = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        assert_errno!(fs.setattr(&me, f, &chmod).await, libc::EROFS);
        assert_errno!(fs.setxattr(&me, f, b"user.x", b"1", XattrMode::Any).await, libc::EROFS);
        assert_errno!(fs.removexattr(&me, f, b"user.x").await, libc::EROFS);
        assert_errno!(fs.access(&me, f, libc::W_OK as u32).await, libc::EROFS);
        assert_eq!(t.read_file("/f").await, b"data");
        let after = t.stat("/f").await;
        assert_eq!((after.perm, after.size, after.mtime), (before.perm, before.size, before.mtime));
        assert_eq!(t.ls_sorted("/").await, ["d", "f"]);
    }

    async fn the_control_directory_over_a_read_only_tree_takes_no_commands(t: TestVolume) {
        let guarded = Arc::new(Guarded::new(Arc::new(t.volume.clone()), ReadOnly));
        let fs = ControlFs::wrapping(guarded, t.volume.clone(), true);
        let me = Caller::root();
        let control = fs.lookup(&me, Ino::ROOT, b".tarbox").await.expect("/.tarbox");
        assert_eq!(control.kind, FileType::Directory);
        let layers = fs.lookup(&me, control.ino, b"layers").await.expect("layers");
        let new = fs.lookup(&me, layers.ino, b"new").await.expect("layers/new");
        assert_errno!(fs.open(&me, new.ino, libc::O_WRONLY).await, libc::EROFS);
        let list = fs.lookup(&me, layers.ino, b"list").await.expect("layers/list");
        let fh = fs.open(&me, list.ino, libc::O_RDONLY).await.expect("read layers/list");
        assert!(fs.is_generated(fh));
        assert!(!fs.read(&me, fh, 0, 4096).await.expect("read").is_empty());
        fs.release(&me, fh).await.expect("release");
        assert_eq!(t.volume.layers().tree().await.expect("tree").layers.len(), 1);
    }

    async fn snapshots_keep_the_permissions_of_their_checkpoint(t: TestVolume) {
        t.write_file("/private", b"alice only").await;
        t.chown("/private", 1000, 1000).await;
        t.chmod("/private", 0o600).await;
        t.volume.layers().checkpoint("cp", "").await.expect("checkpoint");
        // Opened up in the live tree afterwards: the snapshot still holds the old permissions.
        t.chmod("/private", 0o644).await;
        let fs = ControlFs::with_control_dir(t.volume.clone(), true);
        let me = Caller::root();
        let control = fs.lookup(&me, Ino::ROOT, b".tarbox").await.expect("/.tarbox");
        let snapshots = fs.lookup(&me, control.ino, b"snapshots").await.expect("snapshots");
        let cp = fs.lookup(&me, snapshots.ino, b"cp").await.expect("snapshots/cp");
        let private = fs.lookup(&bob(), cp.ino, b"private").await.expect("lookup as bob");
        assert_eq!(private.perm, 0o600);
        assert_errno!(fs.open(&bob(), private.ino, libc::O_RDONLY).await, libc::EACCES);
        let fh = fs.open(&alice(), private.ino, libc::O_RDONLY).await.expect("alice reads her file");
        assert_eq!(&fs.read(&alice(), fh, 0, 64).await.expect("read")[..], b"alice only");
        fs.release(&alice(), fh).await.expect("release");
    }
}
