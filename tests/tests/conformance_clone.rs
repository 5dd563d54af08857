//! Clones and retired tenants: a clone holds exactly the tree of its source at a checkpoint or
//! now (modes, owners, times, links, xattrs, data), shares nothing writable with it, and a
//! retired tenant keeps its checkpoints restorable until the last one is dropped.

use tarbox_fs::Filesystem as _;
use tarbox_fs::{
    Caller, CloneOptions, FsError, Ino, LayerRef, Quota, SetAttr, TenantState, TimeSet, Timestamp,
    XattrMode,
};
use tarbox_tests::{
    TestVolume, assert_errno, backend_tests, noise, small_blocks, unique_tenant_name,
};

/// Fill `t` with one of everything a tree can hold, across several blocks.
async fn populate(t: &TestVolume) {
    let root = Caller::root();
    t.mkdir_mode("/data", 0o750).await;
    t.mkdir_p("/data/deep/er").await;
    t.write_file("/data/big", &noise(300 * 1024, 1)).await;
    t.write_file("/data/deep/er/small", b"small file").await;
    t.write_file("/empty", b"").await;
    t.chown("/data/big", 1000, 2000).await;
    t.chmod("/data/deep", 0o1777).await;
    let big = t.ino("/data/big").await;
    let (top, _) = t.parent("/data/x").await;
    t.volume
        .link(&root, big, top, b"big-link")
        .await
        .expect("link");
    t.volume
        .symlink(&root, Ino::ROOT, b"sym", b"data/big")
        .await
        .expect("symlink");
    t.volume
        .mknod(&root, Ino::ROOT, b"fifo", libc::S_IFIFO | 0o640, 0)
        .await
        .expect("mknod");
    t.volume
        .setxattr(&root, big, b"user.origin", b"dataset-7", XattrMode::Any)
        .await
        .expect("setxattr");
    let when = Timestamp(1_600_000_000_123_456_789);
    let set = SetAttr {
        mtime: Some(TimeSet::At(when)),
        atime: Some(TimeSet::At(when)),
        ..SetAttr::default()
    };
    let small = t.ino("/data/deep/er/small").await;
    t.volume.setattr(&root, small, &set).await.expect("utimens");
}

fn unlimited() -> CloneOptions {
    CloneOptions::default()
}

backend_tests! {
    async fn a_clone_of_a_checkpoint_is_that_tree_and_nothing_after_it(t: TestVolume) {
        let t = small_blocks(&t).await;
        populate(&t).await;
        t.volume.sync_all().await.expect("sync");
        let at_checkpoint = t.listing().await;
        t.volume.layers().checkpoint("v1", "").await.expect("checkpoint");
        // Changes after the checkpoint stay out of the clone.
        t.write_file("/data/big", b"rewritten").await;
        t.write_file("/later", b"later").await;
        let (data, _) = t.parent("/data/deep/er/small").await;
        t.volume.unlink(&Caller::root(), data, b"small").await.expect("unlink");

        let name = unique_tenant_name();
        let info = t.engine
            .clone_tenant(&t.tenant, Some(&LayerRef::from("v1")), &name, unlimited())
            .await
            .expect("clone of v1");
        let source = t.engine.tenant_info(&t.tenant).await.expect("source info");
        assert_eq!(info.block_size, source.block_size, "the clone keeps the source's block size");
        let clone = t.adopt(&name).await;
        assert_eq!(clone.listing().await, at_checkpoint);
        let report = t.engine.fsck(&name, &|_| {}).await.expect("fsck");
        assert!(report.is_clean(), "the clone is consistent: {:?}", report.problems);

        // Usage is what the tree holds: the same as the source had at the checkpoint.
        let layers = t.volume.layers().tree().await.expect("tree");
        let v1 = layers.resolve(&LayerRef::from("v1")).expect("v1");
        assert_eq!(Some(clone.usage().await), v1.usage);
        assert!(clone.volume.layers().tree().await.expect("tree").layers.len() == 1, "a clone starts without history");
    }

    async fn a_clone_of_the_live_tree_is_independent_of_its_source(t: TestVolume) {
        populate(&t).await;
        t.volume.sync_all().await.expect("sync");
        let name = unique_tenant_name();
        t.engine.clone_tenant(&t.tenant, None, &name, unlimited()).await.expect("clone");
        let clone = t.adopt(&name).await;
        assert_eq!(clone.listing().await, t.listing().await);
        assert_eq!(clone.usage().await, t.usage().await);

        clone.write_file("/data/big", b"the clone's own").await;
        clone.write_file("/only-in-clone", b"x").await;
        t.write_file("/only-in-source", b"y").await;
        assert_eq!(t.read_file("/data/big").await, noise(300 * 1024, 1), "the source is untouched");
        assert_eq!(clone.read_file("/data/big-link").await, b"the clone's own", "hard links survive");
        assert!(t.resolve("/only-in-clone").await.is_err());
        assert!(clone.resolve("/only-in-source").await.is_err());
        // New inodes of the clone do not collide with the ones it inherited.
        let fresh = clone.stat("/only-in-clone").await.ino;
        assert!(fresh.0 > t.stat("/data/big").await.ino.0);
    }

    async fn a_clone_keeps_blocks_written_in_part(t: TestVolume) {
        let root = Caller::root();
        let mut model = noise(512 * 1024, 5);
        t.write_file("/f", &model).await;
        // Small writes into stored blocks are stored as patched blocks.
        let fh = t.volume.open(&root, t.ino("/f").await, libc::O_RDWR).await.expect("open");
        for (offset, byte) in [(1000, b'a'), (300_000, b'b')] {
            model[offset..offset + 100].fill(byte);
            t.volume.write(&root, fh, offset as u64, &[byte; 100]).await.expect("write");
        }
        t.volume.release(&root, fh).await.expect("release");
        let name = unique_tenant_name();
        t.engine.clone_tenant(&t.tenant, None, &name, unlimited()).await.expect("clone");
        // The source lets go of everything; the clone holds its own references.
        t.unlink("/f").await;
        let clone = t.adopt(&name).await;
        assert_eq!(clone.read_file("/f").await, model);
        let report = t.engine.fsck(&name, &|_| {}).await.expect("fsck");
        assert!(report.is_clean(), "the clone is consistent: {:?}", report.problems);
        let fh = clone.volume.open(&root, clone.ino("/f").await, libc::O_RDWR).await.expect("open");
        model[1050..1150].fill(b'c');
        clone.volume.write(&root, fh, 1050, &[b'c'; 100]).await.expect("write");
        clone.volume.release(&root, fh).await.expect("release");
        assert_eq!(clone.read_file("/f").await, model);
    }

    async fn a_clone_leaves_open_unlinked_files_behind(t: TestVolume) {
        let root = Caller::root();
        t.write_file("/kept", b"kept").await;
        t.write_file("/doomed", &noise(64 * 1024, 2)).await;
        let doomed = t.ino("/doomed").await;
        let fh = t.volume.open(&root, doomed, libc::O_RDONLY).await.expect("open");
        t.volume.unlink(&root, Ino::ROOT, b"doomed").await.expect("unlink");
        let name = unique_tenant_name();
        let info = t.engine.clone_tenant(&t.tenant, None, &name, unlimited()).await.expect("clone");
        assert_eq!(info.usage.inodes, 2, "root and /kept; the orphan stays with its source");
        assert_eq!(info.usage.bytes, 4096);
        t.volume.release(&root, fh).await.expect("release");
        t.adopt(&name).await;
    }

    async fn clones_refuse_taken_names_bad_names_and_unknown_sources(t: TestVolume) {
        assert_errno!(t.engine.clone_tenant(&t.tenant, None, &t.tenant, unlimited()).await, libc::EEXIST);
        assert_errno!(t.engine.clone_tenant(&t.tenant, None, "Not_A_Name", unlimited()).await, libc::EINVAL);
        let nobody = unique_tenant_name();
        assert_errno!(t.engine.clone_tenant(&nobody, None, &unique_tenant_name(), unlimited()).await, libc::ENOENT);
        let err = t.engine
            .clone_tenant(&t.tenant, Some(&LayerRef::from("missing")), &unique_tenant_name(), unlimited())
            .await
            .expect_err("no such checkpoint");
        assert!(matches!(err, FsError::LayerNotFound(_)), "{err}");
        // The quota given is the clone's.
        let name = unique_tenant_name();
        let quota = Quota { bytes: Some(1 << 20), inodes: Some(100) };
        let info = t.engine
            .clone_tenant(&t.tenant, None, &name, CloneOptions { quota, owner: Some("me".into()) })
            .await
            .expect("clone");
        assert_eq!((info.quota, info.owner.as_deref()), (quota, Some("me")));
        t.adopt(&name).await;
    }

    async fn a_retired_tenant_keeps_its_checkpoints_until_the_last_is_dropped(t: TestVolume) {
        let owner = t.new_tenant(Default::default()).await;
        owner.write_file("/a", b"first").await;
        owner.volume.layers().checkpoint("one", "").await.expect("checkpoint one");
        owner.write_file("/a", b"second").await;
        owner.volume.layers().checkpoint("two", "").await.expect("checkpoint two");
        owner.write_file("/a", b"live").await;
        owner.volume.sync_all().await.expect("sync");

        let state = t.engine.retire_tenant(&owner.tenant).await.expect("retire");
        assert_eq!(state, TenantState::Retired);
        assert_errno!(t.engine.volume(&owner.tenant).await, libc::ENOENT);
        assert_errno!(owner.volume.mkdir(&Caller::root(), Ino::ROOT, b"late", 0o755).await, libc::ENOENT);
        assert_errno!(t.engine.clone_tenant(&owner.tenant, None, &unique_tenant_name(), unlimited()).await, libc::EINVAL);

        let restored = unique_tenant_name();
        t.engine
            .clone_tenant(&owner.tenant, Some(&LayerRef::from("two")), &restored, unlimited())
            .await
            .expect("restore two");
        assert_eq!(t.adopt(&restored).await.read_file("/a").await, b"second");

        t.engine.drop_retired_checkpoint(&owner.tenant, &LayerRef::from("two")).await.expect("drop two");
        let info = t.engine.tenant_info(&owner.tenant).await.expect("still there");
        assert_eq!(info.state, TenantState::Retired);
        let first = unique_tenant_name();
        t.engine
            .clone_tenant(&owner.tenant, Some(&LayerRef::from("one")), &first, unlimited())
            .await
            .expect("restore one after two was dropped");
        assert_eq!(t.adopt(&first).await.read_file("/a").await, b"first");

        t.engine.drop_retired_checkpoint(&owner.tenant, &LayerRef::from("one")).await.expect("drop one");
        let info = t.engine.tenant_info(&owner.tenant).await.expect("deleted, not yet purged");
        assert_eq!(info.state, TenantState::Deleted, "the data goes with the last checkpoint");
    }

    async fn retiring_a_tenant_without_checkpoints_deletes_it(t: TestVolume) {
        let other = t.new_tenant(Default::default()).await;
        other.write_file("/x", b"x").await;
        assert_eq!(t.engine.retire_tenant(&other.tenant).await.expect("retire"), TenantState::Deleted);
        assert_errno!(t.engine.drop_retired_checkpoint(&t.tenant, &LayerRef::from("any")).await, libc::EINVAL);
    }
}
