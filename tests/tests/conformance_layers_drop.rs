//! Copy-on-write layers: dropping layers (folding a checkpoint into its children, dropping
//! leaves) and usage across switches and drops.
//!
//! Trees are compared whole through the snapshots of `layers_common`.

mod layers_common;

use tarbox_fs::LayerRef;
use tarbox_fs::{Caller, LayerId, Quota, TenantOptions};
use tarbox_tests::{TestVolume, assert_errno, backend_tests, noise, small_blocks};

use layers_common::{
    BS, assert_same_tree, checkpoint, id_ref, ids, pwrite_path, read_path, set_xattr, snapshot,
    switch, time_travel, travel, tree, uncached, unlink,
};

const MIB: usize = 1 << 20;

backend_tests! {
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
}
