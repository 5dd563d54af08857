//! The metadata cache: what one engine changes, another engine on the same store (as on another
//! node) sees within the feed's delay, however long it has cached; a file written and closed on
//! one opens whole on the other at once (close-to-open); and what is cached is served without
//! asking the store.

use std::time::{Duration, Instant};

use tarbox_fs::Filesystem as _;
use tarbox_fs::backend::faulty::Faults;
use tarbox_fs::{Caller, Engine, EngineConfig, FsError, Ino, SetAttr, Volume};
use tarbox_tests::{TestVolume, backend_tests};

/// Far longer than any test: only the change feed can make a cached value go.
fn long_cache() -> EngineConfig {
    EngineConfig {
        meta_cache_ttl: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}

/// A second engine on the test's store, as another node would be.
async fn other_engine(t: &TestVolume) -> (Engine, Volume) {
    let engine = Engine::with_backend(t.engine.backend().clone(), long_cache())
        .await
        .expect("second engine");
    let volume = engine
        .volume(&t.tenant)
        .await
        .expect("volume on the second engine");
    (engine, volume)
}

/// How long until `check` holds on `volume`, polling; panics past `limit`.
async fn seen_within<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not seen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn lookup(v: &Volume, parent: Ino, name: &str) -> Result<tarbox_fs::FileAttr, FsError> {
    v.lookup(&Caller::root(), parent, name.as_bytes()).await
}

/// Bound of the assertions: generous for a loaded CI machine, and still three orders of
/// magnitude below the cache's lifetime in these tests.
const BOUND: Duration = Duration::from_secs(2);

backend_tests! {
    async fn another_engines_changes_reach_a_warm_cache(t: TestVolume) {
        let root = Caller::root();
        let (other, b) = other_engine(&t).await;
        let d = t.mkdir_p("/d").await;
        // Warm b's cache: an absent name, the directory, a file.
        assert!(matches!(lookup(&b, d, "f").await, Err(FsError::NotFound)));
        t.write_file("/d/old", b"one").await;
        let old = lookup(&b, d, "old").await.expect("old on b");
        assert_eq!(old.size, 3);

        let mut delays = Vec::new();
        // A name created on a.
        t.write_file("/d/f", b"x").await;
        delays.push(seen_within("create", BOUND, || async { lookup(&b, d, "f").await.is_ok() }).await);
        // Renamed on a: the old name goes, the new one comes.
        t.volume.rename(&root, d, b"f", d, b"g", Default::default()).await.expect("rename");
        delays.push(seen_within("rename", BOUND, || async {
            matches!(lookup(&b, d, "f").await, Err(FsError::NotFound)) && lookup(&b, d, "g").await.is_ok()
        }).await);
        // Attributes changed on a.
        let chmod = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        let g = t.ino("/d/g").await;
        t.volume.setattr(&root, g, &chmod).await.expect("chmod");
        delays.push(seen_within("chmod", BOUND, || async {
            b.getattr(&root, g).await.is_ok_and(|a| a.perm == 0o600)
        }).await);
        // Removed on a.
        t.unlink("/d/g").await;
        delays.push(seen_within("unlink", BOUND, || async {
            matches!(lookup(&b, d, "g").await, Err(FsError::NotFound))
        }).await);
        eprintln!("{}: seen on the other engine after {delays:?}", t.engine.backend().kind());

        // Close-to-open: written and closed on a, opened on b at once, read whole.
        t.write_file("/d/old", b"one two three").await;
        let fh = b.open(&root, old.ino, libc::O_RDONLY).await.expect("open on b");
        assert_eq!(b.read(&root, fh, 0, 100).await.expect("read on b").to_vec(), b"one two three");
        b.release(&root, fh).await.expect("release");
        other.close().await.expect("close");
    }

    async fn operations_on_stale_cached_names_decide_on_the_store(t: TestVolume) {
        let root = Caller::root();
        let (other, b) = other_engine(&t).await;
        let d = t.mkdir_p("/d").await;
        t.write_file("/d/f", b"first").await;
        let first = lookup(&b, d, "f").await.expect("f on b").ino;
        // Replaced on a: whatever b still believes, its own operations on the name act on what
        // the store holds now.
        t.unlink("/d/f").await;
        t.write_file("/d/f", b"second").await;
        b.rename(&root, d, b"f", d, b"h", Default::default()).await.expect("rename on b");
        let h = t.ino("/d/h").await;
        assert_ne!(h, first, "the rename moved the file the store holds");
        assert_eq!(t.read_file("/d/h").await, b"second");
        b.unlink(&root, d, b"h").await.expect("unlink on b");
        seen_within("unlink on b", BOUND, || async {
            matches!(lookup(&t.volume, d, "h").await, Err(FsError::NotFound))
        }).await;
        other.close().await.expect("close");
    }

    async fn changes_after_a_checkpoint_and_from_an_engine_that_caches_nothing_arrive(t: TestVolume) {
        let root = Caller::root();
        let (other, b) = other_engine(&t).await;
        t.write_file("/f", b"one").await;
        let f = t.ino("/f").await;
        assert_eq!(b.getattr(&root, f).await.expect("getattr on b").size, 3);
        // A checkpoint on a, then a change through the new head: b, which cached the file
        // through the old head, sees the change.
        t.volume.layers().checkpoint("c1", "").await.expect("checkpoint");
        t.write_file("/f", b"one two").await;
        seen_within("size after a checkpoint", BOUND, || async {
            b.getattr(&root, f).await.is_ok_and(|a| a.size == 7)
        }).await;
        // An engine with its cache off still tells the others what it changes.
        let plain = Engine::with_backend(
            t.engine.backend().clone(),
            EngineConfig { meta_cache_entries: 0, ..EngineConfig::default() },
        ).await.expect("engine without a cache");
        let c = plain.volume(&t.tenant).await.expect("volume");
        let chmod = SetAttr { mode: Some(0o640), ..SetAttr::default() };
        c.setattr(&root, f, &chmod).await.expect("chmod without a cache");
        seen_within("chmod by an engine without a cache", BOUND, || async {
            b.getattr(&root, f).await.is_ok_and(|a| a.perm == 0o640)
        }).await;
        plain.close().await.expect("close");
        other.close().await.expect("close");
    }

    async fn cached_metadata_is_served_without_the_store(t: TestVolume) {
        let root = Caller::root();
        let faults = Faults::new();
        let config = EngineConfig { outage_wait: Duration::from_millis(200), ..long_cache() };
        let (engine, b) = t.faulty(faults.clone(), config).await;
        let d = t.mkdir_p("/d").await;
        t.write_file("/d/f", b"data").await;
        // Let a's announcements reach b first: a lookup they overtake fills nothing.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let f = lookup(&b, d, "f").await.expect("f");
        assert!(matches!(lookup(&b, d, "missing").await, Err(FsError::NotFound)));
        faults.disconnect();
        // What b looked up is answered from memory: the store is not asked.
        assert_eq!(lookup(&b, d, "f").await.expect("cached lookup").ino, f.ino);
        assert_eq!(b.getattr(&root, f.ino).await.expect("cached getattr").size, 4);
        assert!(matches!(lookup(&b, d, "missing").await, Err(FsError::NotFound)));
        // What it never saw needs the store.
        assert!(matches!(lookup(&b, d, "other").await, Err(FsError::Backend(_))));
        faults.reconnect();
        engine.close().await.expect("close");
    }
}
