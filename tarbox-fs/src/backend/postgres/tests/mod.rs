//! Smoke tests against a real PostgreSQL.
//!
//! The database comes from `TARBOX_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/tarbox_test`) and is created if missing. Every test works
//! in its own uniquely named tenant, so tests run in parallel and reruns never collide.
//!
//! `layers` covers reads and writes through layer chains, `concurrency` the locking, quota and
//! transaction-opening protocol; this file holds the harness and the administrative methods.

mod concurrency;
mod layers;

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

// Names unique across runs: the wall clock is what makes them so.
#[allow(clippy::disallowed_methods)]
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
        // Read back with every record below: the owner survives the round trip.
        owner: Some(format!("test:{test}")),
        data_url: None,
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
        parts: Vec::new(),
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
            owner: None,
            data_url: None,
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
