//! Copy-on-write layers: open handles across switches, other volumes following a switch,
//! checkpoints concurrent with writes, and files unlinked while open across checkpoints and
//! switches.

mod layers_common;

use std::time::Duration;

use tarbox_fs::Filesystem as _;
use tarbox_fs::{Caller, Ino};
use tarbox_tests::{TestVolume, assert_errno, backend_tests, noise, small_blocks};

use layers_common::{
    BS, checkpoint, id_ref, list_dir, read_path, switch, travel, truncate, unlink,
};

backend_tests! {
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
