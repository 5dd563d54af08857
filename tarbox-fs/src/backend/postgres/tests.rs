//! Smoke tests against a real PostgreSQL.
//!
//! The database comes from `TARBOX_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/tarbox_test`) and is created if missing. Every test works
//! in its own uniquely named tenant, so tests run in parallel and reruns never collide.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use super::PostgresBackend;
use crate::backend::{
    Backend, BlockHash, BlockWrite, Compression, LayerView, NewTenant, StoreRead, StoredBlock,
    TenantRecord, TenantState,
};
use crate::error::{BackendError, QuotaKind};
use crate::types::{FileType, Ino, Inode, LayerId, Quota, TenantId, Timestamp};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/tarbox_test";

/// Serialises database creation: concurrent `CREATE DATABASE`s from one template fail.
static DATABASE_READY: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

fn test_url() -> String {
    std::env::var("TARBOX_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

async fn ensure_database(url: &str) {
    let mut ready = DATABASE_READY.lock().await;
    if *ready {
        return;
    }
    let options = PgConnectOptions::from_str(url).expect("valid test database URL");
    let name = options
        .get_database()
        .expect("the test database URL names a database")
        .to_owned();
    let mut admin: PgConnection = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .expect("connect to the postgres database");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("query pg_database");
    if !exists {
        let quoted = name.replace('"', "\"\"");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
    }
    admin.close().await.ok();
    *ready = true;
}

async fn backend() -> PostgresBackend {
    let url = test_url();
    ensure_database(&url).await;
    PostgresBackend::connect(&url)
        .await
        .expect("connect to the test database")
}

fn unique_name(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("pgtest-{test}-{}-{nanos}", std::process::id())
}

fn inode(ino: u64, kind: FileType, parent: u64) -> Inode {
    Inode {
        ino: Ino(ino),
        kind,
        perm: 0o755,
        uid: 1000,
        gid: 1000,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        size: 0,
        atime: Timestamp(1),
        mtime: Timestamp(2),
        ctime: Timestamp(3),
        btime: Timestamp(4),
        rdev: 0,
        parent: Ino(parent),
        target: Vec::new(),
    }
}

async fn create_tenant(b: &PostgresBackend, test: &str, quota: Quota) -> TenantRecord {
    b.create_tenant(&NewTenant {
        name: unique_name(test),
        block_size: 4096,
        compression: Compression::Zstd,
        quota,
        root: inode(1, FileType::Directory, 1),
        created_at: Timestamp(42),
    })
    .await
    .expect("create tenant")
}

fn view(tenant: TenantId, chain: &[LayerId]) -> LayerView {
    LayerView {
        tenant,
        chain: Arc::from(chain),
    }
}

/// Add a working layer on top of the tenant's head and make it the head, as a checkpoint would.
async fn push_layer(b: &PostgresBackend, tenant: TenantId, parent: LayerId) -> LayerId {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO layers (tenant_id, parent, description, created_at) \
         VALUES ($1, $2, 'test layer', 0) RETURNING id",
    )
    .bind(tenant.0)
    .bind(parent.0)
    .fetch_one(b.pool())
    .await
    .expect("insert layer");
    sqlx::query("UPDATE tenants SET head_layer = $2 WHERE id = $1")
        .bind(tenant.0)
        .bind(id)
        .execute(b.pool())
        .await
        .expect("move head");
    LayerId(id)
}

fn block(fill: u8) -> StoredBlock {
    let data = vec![fill; 100];
    StoredBlock {
        hash: BlockHash(*blake3::hash(&data).as_bytes()),
        compressed: false,
        data: Bytes::from(data),
    }
}

fn map(index: u64, b: &StoredBlock) -> BlockWrite {
    BlockWrite {
        index,
        block: Some(b.hash),
    }
}

async fn refcount(b: &PostgresBackend, tenant: TenantId, hash: BlockHash) -> Option<i64> {
    sqlx::query_scalar("SELECT refcount FROM blocks WHERE tenant_id = $1 AND hash = $2")
        .bind(tenant.0)
        .bind(&hash.0[..])
        .fetch_optional(b.pool())
        .await
        .expect("read refcount")
}

async fn names(r: &mut dyn StoreRead, dir: Ino) -> Vec<Vec<u8>> {
    r.list_dir(dir, 0, 1000)
        .await
        .expect("list_dir")
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[tokio::test]
async fn tenant_lifecycle_and_root_inode() {
    let b = backend().await;
    let t = create_tenant(&b, "lifecycle", Quota::default()).await;
    assert_eq!(t.state, TenantState::Active);

    assert_eq!(
        b.tenant_by_name(&t.name).await.expect("by name"),
        Some(t.clone())
    );
    assert_eq!(b.tenant_by_id(t.id).await.expect("by id"), Some(t.clone()));
    assert!(b.list_tenants().await.expect("list").contains(&t));
    let layers = b.layers(t.id).await.expect("layers");
    assert_eq!(layers.len(), 1);
    assert_eq!(
        (layers[0].id, layers[0].parent, layers[0].name.as_deref()),
        (t.head_layer, None, None)
    );
    assert_eq!(layers[0].description, "base");

    let v = view(t.id, &[t.head_layer]);
    let root = b.reader(&v).inode(Ino::ROOT).await.expect("read root");
    assert_eq!(root, Some(inode(1, FileType::Directory, 1)));
    let usage = b.usage(t.id).await.expect("usage");
    assert_eq!((usage.bytes, usage.inodes), (0, 1));

    assert_eq!(b.alloc_inodes(t.id, 10).await.expect("alloc"), 2);
    assert_eq!(b.alloc_inodes(t.id, 1).await.expect("alloc"), 12);

    let again = b
        .create_tenant(&NewTenant {
            name: t.name.clone(),
            block_size: 4096,
            compression: Compression::None,
            quota: Quota::default(),
            root: inode(1, FileType::Directory, 1),
            created_at: Timestamp(0),
        })
        .await;
    assert!(
        matches!(again, Err(BackendError::TenantExists)),
        "{again:?}"
    );

    assert!(matches!(
        b.purge_tenant(t.id).await,
        Err(BackendError::Other(_))
    ));
    assert!(b.mark_tenant_deleted(t.id).await.expect("mark"));
    assert!(!b.mark_tenant_deleted(t.id).await.expect("mark again"));
    assert!(matches!(
        b.begin(&v, &[Ino::ROOT]).await,
        Err(BackendError::TenantGone)
    ));
    b.purge_tenant(t.id).await.expect("purge");
    assert_eq!(b.tenant_by_id(t.id).await.expect("by id"), None);
    assert!(b.reader(&v).inode(Ino::ROOT).await.expect("read").is_none());
    b.purge_tenant(t.id).await.expect("purge is idempotent");
}

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
    let one = PostgresBackend { pool };
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
async fn orphans_of_dead_sessions() {
    let b = backend().await;
    let t = create_tenant(&b, "orphans", Quota::default()).await;
    let v = view(t.id, &[t.head_layer]);
    let live = b
        .open_session("live", Timestamp(1_000))
        .await
        .expect("open");
    let dead = b
        .open_session("dead", Timestamp(1_000))
        .await
        .expect("open");

    let mut tx = b
        .begin(&v, &[Ino(30), Ino(31), Ino(32)])
        .await
        .expect("begin");
    tx.add_orphan(Ino(30), live).await.expect("orphan");
    tx.add_orphan(Ino(31), dead).await.expect("orphan");
    tx.add_orphan(Ino(32), live).await.expect("orphan");
    tx.remove_orphan(Ino(32)).await.expect("forget");
    tx.commit().await.expect("commit");

    assert!(
        b.dead_orphans(t.id, Timestamp(500))
            .await
            .expect("dead")
            .is_empty()
    );
    b.close_session(dead).await.expect("close");
    let found = b.dead_orphans(t.id, Timestamp(500)).await.expect("dead");
    assert_eq!(
        found.iter().map(|o| o.ino).collect::<Vec<_>>(),
        vec![Ino(31)]
    );
    b.heartbeat(live, Timestamp(5_000))
        .await
        .expect("heartbeat");
    let found = b.dead_orphans(t.id, Timestamp(2_000)).await.expect("dead");
    assert_eq!(
        found.iter().map(|o| o.ino).collect::<Vec<_>>(),
        vec![Ino(31)]
    );
    let found = b.dead_orphans(t.id, Timestamp(6_000)).await.expect("dead");
    assert_eq!(
        found.iter().map(|o| o.ino).collect::<Vec<_>>(),
        vec![Ino(30), Ino(31)]
    );
}
