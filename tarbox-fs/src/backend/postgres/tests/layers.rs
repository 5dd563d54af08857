//! Reads and writes through layer chains: names, whiteouts, xattrs, tombstones, block mappings
//! and block reference counts.

use super::*;

#[tokio::test]
async fn names_through_two_layers() {
    let b = backend().await;
    let t = create_tenant(&b, "dentries", Quota::default()).await;
    let base = t.head_layer;
    let root = Ino::ROOT;

    let mut tx = b.begin(&view(t.id, &[base]), &[root]).await.expect("begin");
    for (name, ino) in [(&b"a"[..], 10), (&b"b"[..], 11), (&b"c"[..], 12)] {
        tx.put_inode(&inode(ino, FileType::Regular, 1))
            .await
            .expect("put");
        tx.bind(root, name, Ino(ino), FileType::Regular)
            .await
            .expect("bind");
    }
    tx.set_xattr(Ino(10), b"user.x", Some(&b"1"[..]))
        .await
        .expect("xattr");
    tx.set_xattr(Ino(10), b"user.y", Some(&b"2"[..]))
        .await
        .expect("xattr");
    tx.commit().await.expect("commit");

    let head = push_layer(&b, t.id, base).await;
    let v = view(t.id, &[head, base]);
    let mut tx = b.begin(&v, &[root]).await.expect("begin on the new head");
    tx.unbind(root, b"a").await.expect("unbind a");
    tx.bind(root, b"d", Ino(13), FileType::Directory)
        .await
        .expect("bind d");
    tx.bind(root, b"b", Ino(14), FileType::Symlink)
        .await
        .expect("rebind b");
    tx.unbind(root, b"zzz").await.expect("unbind absent");
    // Reads in the transaction see its writes.
    assert!(tx.lookup(root, b"a").await.expect("lookup").is_none());
    tx.set_xattr(Ino(10), b"user.x", None)
        .await
        .expect("remove xattr");
    tx.set_xattr(Ino(10), b"user.z", Some(&b"3"[..]))
        .await
        .expect("set xattr");
    tx.remove_inode(Ino(11)).await.expect("remove inode");
    tx.commit().await.expect("commit");

    let mut r = b.reader(&v);
    assert!(r.lookup(root, b"a").await.expect("lookup").is_none());
    let b_entry = r.lookup(root, b"b").await.expect("lookup").expect("b");
    assert_eq!((b_entry.ino, b_entry.kind), (Ino(14), FileType::Symlink));
    assert_eq!(
        r.lookup(root, b"c").await.expect("lookup").map(|e| e.ino),
        Some(Ino(12))
    );
    // Cookie order: c (base), then d and b (bound in that order on the head).
    assert_eq!(
        names(&mut *r, root).await,
        vec![b"c".to_vec(), b"d".to_vec(), b"b".to_vec()]
    );
    let page = r.list_dir(root, 0, 2).await.expect("page 1");
    assert_eq!(page.len(), 2);
    let rest = r.list_dir(root, page[1].cookie, 2).await.expect("page 2");
    assert_eq!(
        rest.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![b"b".to_vec()]
    );
    assert!(r.dir_has_entries(root).await.expect("has entries"));
    assert_eq!(r.xattr(Ino(10), b"user.x").await.expect("xattr"), None);
    assert_eq!(
        r.xattr(Ino(10), b"user.y").await.expect("xattr"),
        Some(b"2".to_vec())
    );
    assert_eq!(
        r.xattr_names(Ino(10)).await.expect("names"),
        vec![b"user.y".to_vec(), b"user.z".to_vec()]
    );
    assert!(r.inode(Ino(11)).await.expect("inode").is_none());
    let mut found: Vec<Ino> = r
        .inodes(&[Ino(10), Ino(11), Ino(12), Ino(999)])
        .await
        .expect("inodes")
        .into_iter()
        .map(|i| i.ino)
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![Ino(10), Ino(12)],
        "tombstoned and absent inodes are omitted"
    );

    // The base layer is history: untouched.
    let mut old = b.reader(&view(t.id, &[base]));
    assert_eq!(
        names(&mut *old, root).await,
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(
        old.lookup(root, b"b").await.expect("lookup").map(|e| e.ino),
        Some(Ino(11))
    );
    assert!(old.inode(Ino(11)).await.expect("inode").is_some());
    assert_eq!(old.inodes(&[Ino(11)]).await.expect("inodes").len(), 1);
    assert_eq!(
        old.xattr(Ino(10), b"user.x").await.expect("xattr"),
        Some(b"1".to_vec())
    );

    // Emptying the directory on the head: whiteouts for names of the base, nothing for "d".
    let mut tx = b.begin(&v, &[root]).await.expect("begin");
    for name in [&b"b"[..], &b"c"[..], &b"d"[..]] {
        tx.unbind(root, name).await.expect("unbind");
    }
    assert!(!tx.dir_has_entries(root).await.expect("has entries"));
    tx.commit().await.expect("commit");
    let mut r = b.reader(&v);
    assert!(names(&mut *r, root).await.is_empty());
    assert!(!r.dir_has_entries(root).await.expect("has entries"));
    let whiteouts: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT name FROM dentries WHERE tenant_id = $1 AND layer_id = $2 AND ino IS NULL \
         ORDER BY name",
    )
    .bind(t.id.0)
    .bind(head.0)
    .fetch_all(b.pool())
    .await
    .expect("whiteouts");
    assert_eq!(whiteouts, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

    // Binding over a whiteout brings the name back.
    let mut tx = b.begin(&v, &[root]).await.expect("begin");
    tx.bind(root, b"a", Ino(15), FileType::Regular)
        .await
        .expect("bind");
    tx.commit().await.expect("commit");
    assert_eq!(names(&mut *b.reader(&v), root).await, vec![b"a".to_vec()]);
}

#[tokio::test]
async fn shared_blocks_are_counted_and_freed() {
    let b = backend().await;
    let t = create_tenant(&b, "refcount", Quota::default()).await;
    let v = view(t.id, &[t.head_layer]);
    let (h, g) = (block(1), block(2));

    let mut tx = b.begin(&v, &[Ino(10), Ino(11)]).await.expect("begin");
    for ino in [10, 11] {
        tx.put_inode(&inode(ino, FileType::Regular, 1))
            .await
            .expect("put");
    }
    tx.write_blocks(Ino(10), &[map(0, &h)], std::slice::from_ref(&h))
        .await
        .expect("write 10");
    // The same content again, once as a new block and once as an already stored one.
    tx.write_blocks(Ino(11), &[map(0, &h), map(1, &h)], &[h.clone(), h.clone()])
        .await
        .expect("write 11");
    tx.write_blocks(Ino(11), &[map(2, &h)], &[])
        .await
        .expect("write stored");
    tx.commit().await.expect("commit");
    assert_eq!(refcount(&b, t.id, h.hash).await, Some(4));

    let mut tx = b.begin(&v, &[Ino(10)]).await.expect("begin");
    tx.remove_inode(Ino(10)).await.expect("remove 10");
    tx.commit().await.expect("commit");
    assert_eq!(refcount(&b, t.id, h.hash).await, Some(3));
    let mut r = b.reader(&v);
    assert_eq!(r.blocks(&[h.hash]).await.expect("blocks"), vec![h.clone()]);
    assert_eq!(
        r.block_map(Ino(11), 0..10).await.expect("map"),
        vec![(0, h.hash), (1, h.hash), (2, h.hash)]
    );

    // Overwrite two mappings, one with a hole; the replaced references are released.
    let mut tx = b.begin(&v, &[Ino(11)]).await.expect("begin");
    tx.write_blocks(
        Ino(11),
        &[
            map(0, &g),
            BlockWrite {
                index: 1,
                block: None,
            },
        ],
        std::slice::from_ref(&g),
    )
    .await
    .expect("overwrite");
    tx.commit().await.expect("commit");
    assert_eq!(refcount(&b, t.id, h.hash).await, Some(1));
    assert_eq!(refcount(&b, t.id, g.hash).await, Some(1));
    assert_eq!(
        b.reader(&v).block_map(Ino(11), 0..10).await.expect("map"),
        vec![(0, g.hash), (2, h.hash)]
    );

    let mut tx = b.begin(&v, &[Ino(11)]).await.expect("begin");
    tx.remove_inode(Ino(11)).await.expect("remove 11");
    tx.commit().await.expect("commit");
    assert_eq!(refcount(&b, t.id, h.hash).await, None);
    assert_eq!(refcount(&b, t.id, g.hash).await, None);
    assert!(
        b.reader(&v)
            .blocks(&[h.hash, g.hash])
            .await
            .expect("blocks")
            .is_empty()
    );

    // A mapping to a block that is neither new nor stored is a conflict, and writes nothing.
    let mut tx = b.begin(&v, &[Ino(12)]).await.expect("begin");
    let missing = tx.write_blocks(Ino(12), &[map(0, &h)], &[]).await;
    assert!(
        matches!(missing, Err(BackendError::Conflict)),
        "{missing:?}"
    );
    drop(tx);
    assert!(
        b.reader(&v)
            .block_map(Ino(12), 0..10)
            .await
            .expect("map")
            .is_empty()
    );
}

#[tokio::test]
async fn truncate_through_two_layers() {
    let b = backend().await;
    let t = create_tenant(&b, "truncate", Quota::default()).await;
    let base = t.head_layer;
    let [a, bb, c, d, e, f] = [1, 2, 3, 4, 5, 6].map(block);
    let file = Ino(20);

    let mut tx = b.begin(&view(t.id, &[base]), &[file]).await.expect("begin");
    tx.put_inode(&inode(20, FileType::Regular, 1))
        .await
        .expect("put");
    tx.write_blocks(
        file,
        &[map(0, &a), map(1, &bb), map(2, &c), map(3, &d)],
        &[a.clone(), bb.clone(), c.clone(), d.clone()],
    )
    .await
    .expect("write base");
    tx.commit().await.expect("commit");

    let head = push_layer(&b, t.id, base).await;
    let v = view(t.id, &[head, base]);
    let mut tx = b.begin(&v, &[file]).await.expect("begin");
    tx.write_blocks(file, &[map(1, &e)], std::slice::from_ref(&e))
        .await
        .expect("write head");
    assert_eq!(
        tx.block_map(file, 0..10).await.expect("map"),
        vec![(0, a.hash), (1, e.hash), (2, c.hash), (3, d.hash)]
    );
    tx.truncate_blocks(file, 1).await.expect("truncate");
    assert_eq!(
        tx.block_map(file, 0..10).await.expect("map"),
        vec![(0, a.hash)]
    );
    tx.write_blocks(file, &[map(2, &f)], std::slice::from_ref(&f))
        .await
        .expect("extend");
    tx.commit().await.expect("commit");

    assert_eq!(
        b.reader(&v).block_map(file, 0..10).await.expect("map"),
        vec![(0, a.hash), (2, f.hash)]
    );
    assert_eq!(
        b.reader(&v).block_map(file, 1..2).await.expect("map"),
        vec![]
    );
    // History keeps its blocks; the head's dropped block is gone.
    assert_eq!(
        b.reader(&view(t.id, &[base]))
            .block_map(file, 0..10)
            .await
            .expect("map"),
        vec![(0, a.hash), (1, bb.hash), (2, c.hash), (3, d.hash)]
    );
    assert_eq!(refcount(&b, t.id, e.hash).await, None);
    assert_eq!(refcount(&b, t.id, bb.hash).await, Some(1));
    let holes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM block_map WHERE tenant_id = $1 AND layer_id = $2 AND hash IS NULL",
    )
    .bind(t.id.0)
    .bind(head.0)
    .fetch_one(b.pool())
    .await
    .expect("count holes");
    assert_eq!(holes, 2, "holes at 1 and 3 (2 was remapped)");

    // Removing the inode on the head tombstones it; the base keeps its version and blocks.
    let mut tx = b.begin(&v, &[file]).await.expect("begin");
    tx.remove_inode(file).await.expect("remove");
    tx.commit().await.expect("commit");
    assert!(b.reader(&v).inode(file).await.expect("inode").is_none());
    assert!(
        b.reader(&view(t.id, &[base]))
            .inode(file)
            .await
            .expect("inode")
            .is_some()
    );
    assert_eq!(refcount(&b, t.id, f.hash).await, None);
    assert_eq!(refcount(&b, t.id, a.hash).await, Some(1));
}
