//! `fsck`: a tree built through the engine is clean and counted exactly; damage written straight
//! into the store is reported with the path that shows it.

use tarbox_fs::Filesystem as _;
use tarbox_fs::backend::{LayerView, TenantRecord};
use tarbox_fs::{Caller, FileType, Ino, Inode};
use tarbox_tests::{TestVolume, backend_tests};

async fn record(t: &TestVolume) -> TenantRecord {
    t.engine
        .backend()
        .tenant_by_name(&t.tenant)
        .await
        .expect("tenant record")
        .expect("tenant exists")
}

/// Write through the store directly, as a bug or a damaged database would.
async fn damage(t: &TestVolume, f: impl AsyncFnOnce(&mut dyn tarbox_fs::backend::StoreTxn)) {
    let rec = record(t).await;
    let view = LayerView {
        tenant: rec.id,
        chain: vec![rec.head_layer].into(),
    };
    let backend = t.engine.backend().clone();
    let mut txn = backend.begin(&view, &[Ino::ROOT]).await.expect("begin");
    f(txn.as_mut()).await;
    txn.commit().await.expect("commit");
}

backend_tests! {
    async fn a_tree_built_by_the_engine_is_clean(t: TestVolume) {
        let root = Caller::root();
        t.volume.mkdir(&root, Ino::ROOT, b"d", 0o755).await.expect("mkdir");
        t.write_file("/d/a", &[1u8; 5000]).await;
        t.write_file("/b", b"bee").await;
        let a = t.ino("/d/a").await;
        let d = t.ino("/d").await;
        t.volume.link(&root, a, Ino::ROOT, b"a2").await.expect("link");
        t.volume.symlink(&root, d, b"s", b"../b").await.expect("symlink");
        let report = t.engine.fsck(&t.tenant, &|_| {}).await.expect("fsck");
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.directories, report.files, report.other), (2, 2, 1));
        assert_eq!(report.counted, report.charged);
        assert_eq!(report.counted.inodes, 5);
    }

    async fn damage_is_reported_with_its_path(t: TestVolume) {
        t.write_file("/f", b"x").await;
        let f = t.stat("/f").await;
        damage(&t, async |txn| {
            txn.bind(Ino::ROOT, b"ghost", Ino(9_999_999), FileType::Regular).await.expect("bind");
            let mut inode: Inode = txn.inode(f.ino).await.expect("read").expect("inode");
            inode.nlink = 3;
            txn.put_inode(&inode).await.expect("put");
        }).await;
        let report = t.engine.fsck(&t.tenant, &|_| {}).await.expect("fsck");
        let problems: Vec<(&str, &str)> = report.problems.iter().map(|p| (p.path.as_str(), p.problem.as_str())).collect();
        assert!(problems.iter().any(|(p, what)| *p == "/ghost" && what.contains("does not exist")), "{problems:?}");
        assert!(problems.iter().any(|(p, what)| *p == "/f" && what.contains("link count 3 but 1 names")), "{problems:?}");
        assert!(!report.is_clean());
    }
}
