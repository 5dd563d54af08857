//! Concurrency: quota charges, inode locks, and the transaction-opening protocol.

use super::*;

#[tokio::test]
async fn concurrent_charges_never_overshoot() {
    let b = backend().await;
    let quota = Quota {
        bytes: Some(100),
        inodes: Some(3),
    };
    let t = create_tenant(&b, "charge", quota).await;
    let v = view(t.id, &[t.head_layer]);

    let mut first = b.begin(&v, &[Ino(100)]).await.expect("begin first");
    assert_eq!(first.charge(60, 1).await.expect("charge"), Ok(()));

    let mut second = b.begin(&v, &[Ino(101)]).await.expect("begin second");
    let pending = tokio::spawn(async move {
        let result = second.charge(60, 0).await;
        (second, result)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !pending.is_finished(),
        "the second charge waits for the first"
    );
    first.commit().await.expect("commit first");
    let (second, result) = pending.await.expect("join");
    assert_eq!(result.expect("charge"), Err(QuotaKind::Bytes));
    drop(second);

    let usage = b.usage(t.id).await.expect("usage");
    assert_eq!((usage.bytes, usage.inodes), (60, 2));

    let mut tx = b.begin(&v, &[Ino(102)]).await.expect("begin");
    assert_eq!(
        tx.charge(40, 0).await.expect("charge"),
        Ok(()),
        "exactly up to the quota"
    );
    assert_eq!(
        tx.charge(0, 2).await.expect("charge"),
        Err(QuotaKind::Inodes)
    );
    assert_eq!(tx.charge(-1000, -1000).await.expect("release"), Ok(()));
    tx.commit().await.expect("commit");
    let usage = b.usage(t.id).await.expect("usage");
    assert_eq!(
        (usage.bytes, usage.inodes),
        (0, 0),
        "negative charges saturate at zero"
    );

    b.set_quota(t.id, Quota::default())
        .await
        .expect("unlimited");
    let mut tx = b.begin(&v, &[Ino(102)]).await.expect("begin");
    assert_eq!(tx.charge(1 << 40, 1 << 20).await.expect("charge"), Ok(()));
}

#[tokio::test]
async fn begin_checks_the_head_and_leaves_connections_clean() {
    let b = backend().await;
    // One connection: a failed begin must hand it back idle, not in a broken transaction.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(
            PgConnectOptions::from_str(&test_url())
                .expect("url")
                .options([("default_transaction_isolation", "read committed")]),
        )
        .await
        .expect("single-connection pool");
    let one = PostgresBackend::from_pool(pool);
    let t = create_tenant(&b, "stale", Quota::default()).await;
    let old = view(t.id, &[t.head_layer]);
    let head = push_layer(&b, t.id, t.head_layer).await;
    let new = view(t.id, &[head, t.head_layer]);

    for _ in 0..3 {
        let stale = one.begin(&old, &[Ino::ROOT]).await;
        assert!(
            matches!(stale, Err(BackendError::StaleView)),
            "{:?}",
            stale.err()
        );
    }
    // The connection is outside any transaction block and holds no lock. (A simple-protocol
    // query: outside a block it runs in a fresh transaction, so now() is its own start time.)
    let row = sqlx::raw_sql(
        "SELECT now() = statement_timestamp() AS idle, \
                (SELECT count(*) FROM pg_locks \
                 WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks",
    )
    .fetch_one(one.pool())
    .await
    .expect("session state");
    let idle: bool = row.try_get("idle").expect("idle");
    let locks: i64 = row.try_get("locks").expect("locks");
    assert!(idle && locks == 0, "idle: {idle}, advisory locks: {locks}");
    let mut tx = one
        .begin(&new, &[Ino(0), Ino::ROOT])
        .await
        .expect("begin on the head");
    assert!(tx.inode(Ino::ROOT).await.expect("read").is_some());
    tx.bind(Ino::ROOT, b"x", Ino(5), FileType::Regular)
        .await
        .expect("bind");
    tx.commit().await.expect("commit");
    assert!(
        one.reader(&new)
            .lookup(Ino::ROOT, b"x")
            .await
            .expect("lookup")
            .is_some()
    );
    // A dropped transaction is rolled back and its locks released.
    let mut tx = one.begin(&new, &[Ino::ROOT]).await.expect("begin");
    tx.unbind(Ino::ROOT, b"x").await.expect("unbind");
    drop(tx);
    assert!(
        one.reader(&new)
            .lookup(Ino::ROOT, b"x")
            .await
            .expect("lookup")
            .is_some()
    );
    let again = tokio::time::timeout(Duration::from_secs(5), one.begin(&new, &[Ino::ROOT])).await;
    assert!(
        matches!(again, Ok(Ok(_))),
        "locks of a dropped transaction are released"
    );
}

#[tokio::test]
async fn inode_locks_exclude_and_cancelled_waits_release() {
    let b = backend().await;
    let t = create_tenant(&b, "locks", Quota::default()).await;
    let v = view(t.id, &[t.head_layer]);

    let holder = b.begin(&v, &[Ino(7), Ino(8)]).await.expect("begin holder");
    // A waiter that gives up while blocked must not leave a locked connection behind.
    let gave_up = tokio::time::timeout(Duration::from_millis(200), b.begin(&v, &[Ino(8)])).await;
    assert!(gave_up.is_err(), "the lock is held");
    let b2 = b.clone();
    let v2 = v.clone();
    let waiter = tokio::spawn(async move { b2.begin(&v2, &[Ino(7)]).await.map(drop) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the second transaction waits for the lock"
    );
    // Unrelated inodes are not blocked.
    let other = tokio::time::timeout(Duration::from_secs(5), b.begin(&v, &[Ino(9)])).await;
    assert!(matches!(other, Ok(Ok(_))));
    holder.commit().await.expect("commit");
    waiter
        .await
        .expect("join")
        .expect("the waiter gets the lock");
    let after = tokio::time::timeout(Duration::from_secs(5), b.begin(&v, &[Ino(8)])).await;
    assert!(
        matches!(after, Ok(Ok(_))),
        "no lock is left over from the cancelled wait"
    );
}

#[tokio::test]
async fn block_insert_racing_its_release_is_not_lost() {
    let b = backend().await;
    let t = create_tenant(&b, "block-race", Quota::default()).await;
    let v = view(t.id, &[t.head_layer]);
    let h = block(9);

    let mut tx = b.begin(&v, &[Ino(40)]).await.expect("begin");
    tx.write_blocks(Ino(40), &[map(0, &h)], std::slice::from_ref(&h))
        .await
        .expect("write");
    tx.commit().await.expect("commit");

    // The releaser drops the last reference and holds the row until it commits.
    let mut releaser = b.begin(&v, &[Ino(40)]).await.expect("begin releaser");
    releaser.remove_inode(Ino(40)).await.expect("remove");

    // Another engine writes the same content meanwhile: as a new block it waits, then re-inserts
    // the row the releaser deleted.
    let mut writer = b.begin(&v, &[Ino(41)]).await.expect("begin writer");
    let h2 = h.clone();
    let pending = tokio::spawn(async move {
        let result = writer
            .write_blocks(Ino(41), &[map(0, &h2)], std::slice::from_ref(&h2))
            .await;
        (writer, result)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !pending.is_finished(),
        "the writer waits for the releaser's row lock"
    );
    releaser.commit().await.expect("commit releaser");
    let (writer, result) = pending.await.expect("join");
    result.expect("the insert survives the concurrent delete");
    writer.commit().await.expect("commit writer");
    assert_eq!(refcount(&b, t.id, h.hash).await, Some(1));
    assert_eq!(
        b.reader(&v).blocks(&[h.hash]).await.expect("blocks"),
        vec![h.clone()]
    );

    // The same race when the writer only names the block as already stored: a conflict, which
    // the engine retries with the block as new.
    let mut releaser = b.begin(&v, &[Ino(41)]).await.expect("begin releaser");
    releaser.remove_inode(Ino(41)).await.expect("remove");
    let mut writer = b.begin(&v, &[Ino(42)]).await.expect("begin writer");
    let h2 = h.clone();
    let pending =
        tokio::spawn(async move { writer.write_blocks(Ino(42), &[map(0, &h2)], &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    releaser.commit().await.expect("commit releaser");
    let result = pending.await.expect("join");
    assert!(matches!(result, Err(BackendError::Conflict)), "{result:?}");
    assert_eq!(refcount(&b, t.id, h.hash).await, None);
}
