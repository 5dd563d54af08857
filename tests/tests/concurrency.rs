//! Concurrency: several engines on one store race on one tenant, as several machines sharing one
//! database would. Each test runs on PostgreSQL (one connection pool per engine, as separate
//! processes) and on one shared in-memory store (`Engine::with_backend(backend.clone(), …)`).
//!
//! Every test asserts invariants that hold whatever the interleaving: exactly one winner per
//! exclusive create, success counts that match the final state, link counts, no lost or
//! duplicated entries, an acyclic tree, data of every writer present, and usage within quota. None
//! sleeps: tasks start together on a barrier and run as fast as they can.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::join_all;
use tarbox_fs::Filesystem as _;
use tarbox_fs::backend::memory::MemoryBackend;
use tarbox_fs::{
    Backend, Caller, Engine, EngineConfig, FileType, FsError, FsResult, Ino, Quota, RenameFlags,
    TenantOptions, Volume,
};
use tarbox_tests::{errno_name, postgres_url, unique_tenant_name};
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------------------------
// A cluster: several engines on one store, one tenant
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Memory,
    Postgres,
}

struct Cluster {
    /// The shared in-memory store, or `None` for PostgreSQL.
    memory: Option<Arc<dyn Backend>>,
    url: Option<String>,
    tenant: String,
    engines: Vec<Engine>,
}

impl Cluster {
    /// `n` engines on a fresh store (memory) or the test database (PostgreSQL), and one fresh
    /// tenant with `options`. `None` when PostgreSQL is unavailable outside CI (already reported).
    async fn start(store: Store, n: usize, options: TenantOptions) -> Option<Cluster> {
        let (memory, url) = match store {
            Store::Memory => (
                Some(Arc::new(MemoryBackend::new()) as Arc<dyn Backend>),
                None,
            ),
            Store::Postgres => (None, Some(postgres_url().await?)),
        };
        let mut cluster = Cluster {
            memory,
            url,
            tenant: unique_tenant_name(),
            engines: Vec::new(),
        };
        for _ in 0..n {
            let engine = cluster.new_engine().await;
            cluster.engines.push(engine);
        }
        cluster.engines[0]
            .create_tenant(&cluster.tenant, options)
            .await
            .unwrap_or_else(|e| panic!("create tenant {}: {e}", cluster.tenant));
        Some(cluster)
    }

    /// Another engine on the same store.
    async fn new_engine(&self) -> Engine {
        let engine = match (&self.memory, &self.url) {
            (Some(backend), _) => {
                Engine::with_backend(backend.clone(), EngineConfig::default()).await
            }
            (None, Some(url)) => Engine::open(url, EngineConfig::default()).await,
            (None, None) => unreachable!("a cluster has a store"),
        };
        engine.unwrap_or_else(|e| panic!("cannot open an engine: {e}"))
    }

    /// One volume of the tenant per engine.
    async fn volumes(&self) -> Vec<Volume> {
        let mut out = Vec::new();
        for engine in &self.engines {
            out.push(engine.volume(&self.tenant).await.expect("open volume"));
        }
        out
    }

    /// A volume of the tenant on an engine opened now, sharing no cache with the others.
    async fn fresh_volume(&self) -> Volume {
        self.new_engine()
            .await
            .volume(&self.tenant)
            .await
            .expect("open volume on a fresh engine")
    }

    async fn usage(&self) -> tarbox_fs::Usage {
        self.engines[0]
            .tenant_info(&self.tenant)
            .await
            .expect("tenant_info")
            .usage
    }

    /// Delete the tenant (the test passed) and end the engines' sessions.
    async fn finish(self) {
        self.engines[0]
            .delete_tenant(&self.tenant)
            .await
            .expect("delete tenant");
        for engine in &self.engines {
            engine.close().await.expect("close engine");
        }
    }
}

/// Run each listed `async fn name(store: Store)` on both stores: `memory::name`, `postgres::name`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::Memory).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Store::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    racing_exclusive_creates,
    racing_renames_between_two_directories,
    racing_unlinks_and_creates,
    racing_mkdir_and_rmdir,
    racing_renames_onto_one_target,
    racing_links_and_unlinks,
    racing_exclusive_xattrs,
    racing_directory_renames_never_make_a_cycle,
    racing_cross_subtree_directory_moves,
    racing_three_way_cross_subtree_moves,
    concurrent_writers_to_aligned_regions,
    concurrent_writers_to_unaligned_regions,
    concurrent_writers_to_one_file_under_a_byte_quota,
    byte_quota_holds_under_concurrent_writers,
    inode_quota_holds_under_concurrent_creates,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn root() -> Caller {
    Caller::root()
}

fn errno<T>(r: &FsResult<T>) -> Option<i32> {
    r.as_ref().err().map(FsError::errno)
}

fn describe<T>(r: &FsResult<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{} ({e})", errno_name(e.errno())),
    }
}

fn small_blocks() -> TenantOptions {
    TenantOptions {
        block_size: 4096,
        ..TenantOptions::default()
    }
}

/// Entries of a directory without `.` and `..`: name -> (ino, kind), failing on a name listed
/// twice.
async fn list(vol: &Volume, dir: Ino) -> BTreeMap<String, (Ino, FileType)> {
    let fh = vol.opendir(&root(), dir).await.expect("opendir");
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page = vol
            .readdir(&root(), dir, fh, offset)
            .await
            .expect("readdir");
        let Some(last) = page.last() else { break };
        assert!(last.next_offset > offset, "readdir offsets must advance");
        offset = last.next_offset;
        for e in page {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = String::from_utf8(e.name).expect("utf-8 names");
            assert!(
                out.insert(name.clone(), (e.ino, e.kind)).is_none(),
                "{name} listed twice in directory {dir}"
            );
        }
    }
    vol.releasedir(&root(), fh).await.expect("releasedir");
    out
}

async fn read_all(vol: &Volume, ino: Ino) -> Vec<u8> {
    let fh = vol
        .open(&root(), ino, libc::O_RDONLY)
        .await
        .expect("open for reading");
    let mut out = Vec::new();
    loop {
        let chunk = vol
            .read(&root(), fh, out.len() as u64, 1 << 20)
            .await
            .expect("read");
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    vol.release(&root(), fh).await.expect("release");
    out
}

async fn new_file(vol: &Volume, dir: Ino, name: &str, data: &[u8]) -> Ino {
    let (attr, fh) = vol
        .create(
            &root(),
            dir,
            name.as_bytes(),
            0o644,
            libc::O_WRONLY | libc::O_EXCL,
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    if !data.is_empty() {
        vol.write(&root(), fh, 0, data).await.expect("write");
    }
    vol.release(&root(), fh).await.expect("release");
    attr.ino
}

async fn mkdir(vol: &Volume, dir: Ino, name: &str) -> Ino {
    vol.mkdir(&root(), dir, name.as_bytes(), 0o755)
        .await
        .unwrap_or_else(|e| panic!("mkdir {name}: {e}"))
        .ino
}

async fn nlink(vol: &Volume, ino: Ino) -> u32 {
    vol.getattr(&root(), ino).await.expect("getattr").nlink
}

/// Number of subdirectories listed in `dir`.
fn subdirs(listing: &BTreeMap<String, (Ino, FileType)>) -> u32 {
    listing
        .values()
        .filter(|(_, k)| *k == FileType::Directory)
        .count() as u32
}

/// Spawn one task per volume, all released together by a barrier; returns their results in
/// volume order.
async fn race<T, F, Fut>(vols: &[Volume], f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Volume) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(vols.len()));
    let tasks = vols.iter().enumerate().map(|(i, vol)| {
        let barrier = barrier.clone();
        let work = f(i, vol.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            work.await
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task panicked"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Namespace races
// ---------------------------------------------------------------------------------------------

/// Four engines create the same names with O_EXCL: each name has exactly one winner, the others
/// see EEXIST, the directory lists each name once, with the winner's inode and data.
async fn racing_exclusive_creates(store: Store) {
    const NAMES: usize = 32;
    let Some(cluster) = Cluster::start(store, 4, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let dir = mkdir(&vols[0], Ino::ROOT, "race").await;
    let results = race(&vols, |engine, vol| async move {
        let mut out = Vec::new();
        for i in 0..NAMES {
            let name = format!("f{i}");
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            let r = vol
                .create(&root(), dir, name.as_bytes(), 0o644, flags)
                .await;
            let r = match r {
                Ok((attr, fh)) => {
                    vol.write(&root(), fh, 0, format!("engine {engine}").as_bytes())
                        .await
                        .expect("write to a file just created");
                    vol.release(&root(), fh).await.expect("release");
                    Ok(attr.ino)
                }
                Err(e) => Err(e),
            };
            out.push(r);
        }
        out
    })
    .await;
    let listing = list(&vols[1], dir).await;
    assert_eq!(listing.len(), NAMES, "listing: {:?}", listing.keys());
    let reader = cluster.fresh_volume().await;
    for i in 0..NAMES {
        let name = format!("f{i}");
        let winners: Vec<(usize, Ino)> = results
            .iter()
            .enumerate()
            .filter_map(|(e, r)| r[i].as_ref().ok().map(|ino| (e, *ino)))
            .collect();
        assert_eq!(winners.len(), 1, "{name}: winners {winners:?}");
        for (e, r) in results.iter().enumerate() {
            if r[i].is_err() {
                assert_eq!(
                    errno(&r[i]),
                    Some(libc::EEXIST),
                    "{name} by engine {e}: {}",
                    describe(&r[i])
                );
            }
        }
        let (winner, ino) = winners[0];
        assert_eq!(listing[&name], (ino, FileType::Regular), "{name}");
        assert_eq!(
            read_all(&reader, ino).await,
            format!("engine {winner}").as_bytes(),
            "{name}"
        );
        assert_eq!(nlink(&reader, ino).await, 1);
    }
    assert_eq!(nlink(&reader, dir).await, 2);
    // Root, the directory and one inode per name: losers leaked nothing.
    let usage = cluster.usage().await;
    assert_eq!(usage.inodes, 2 + NAMES as u64);
    assert_eq!(usage.bytes, NAMES as u64 * 4096);
    cluster.finish().await;
}

/// Engines move entries (files and non-empty directories) back and forth between two directories
/// with RENAME_NOREPLACE: each engine owns some entries and all fight over a shared few. A name
/// is always in exactly one of the directories, so EEXIST never happens; an entry owned by one
/// engine never fails; shared ones may fail with ENOENT when another engine moved them first.
/// Each entry ends where the parity of its successful moves says; link counts and `..` follow.
async fn racing_renames_between_two_directories(store: Store) {
    const ENGINES: usize = 4;
    const FILES: usize = 16;
    const DIRS: usize = 4;
    const SHARED: usize = 4;
    const ROUNDS: usize = 8;
    let Some(cluster) = Cluster::start(store, ENGINES, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let v = &vols[0];
    let d1 = mkdir(v, Ino::ROOT, "d1").await;
    let d2 = mkdir(v, Ino::ROOT, "d2").await;
    let mut names = Vec::new();
    let mut inos = BTreeMap::new();
    for i in 0..FILES {
        let name = format!("f{i}");
        inos.insert(name.clone(), new_file(v, d1, &name, name.as_bytes()).await);
        names.push(name);
    }
    for i in 0..DIRS {
        let name = format!("s{i}");
        let sub = mkdir(v, d1, &name).await;
        new_file(v, sub, "inner", name.as_bytes()).await;
        inos.insert(name.clone(), sub);
        names.push(name);
    }
    // Interleave files and directories in the shared set and in every engine's set.
    names.sort_by_key(|n| (n[1..].parse::<usize>().unwrap_or(0), n.clone()));
    let names = Arc::new(names);
    let results = race(&vols, |engine, vol| {
        let names = names.clone();
        async move {
            // name -> (successful moves, ENOENT failures)
            let mut counts: BTreeMap<String, (u32, u32)> = BTreeMap::new();
            for _ in 0..ROUNDS {
                for (i, name) in names.iter().enumerate() {
                    if i >= SHARED && i % ENGINES != engine {
                        continue;
                    }
                    let in_d1 = vol.lookup(&root(), d1, name.as_bytes()).await.is_ok();
                    let (from, to) = if in_d1 { (d1, d2) } else { (d2, d1) };
                    let flags = RenameFlags {
                        no_replace: true,
                        exchange: false,
                    };
                    let r = vol
                        .rename(&root(), from, name.as_bytes(), to, name.as_bytes(), flags)
                        .await;
                    let c = counts.entry(name.clone()).or_default();
                    match errno(&r) {
                        None => c.0 += 1,
                        Some(libc::ENOENT) if i < SHARED => c.1 += 1,
                        _ => panic!("engine {engine}: rename of {name}: {}", describe(&r)),
                    }
                }
            }
            counts
        }
    })
    .await;
    let check = cluster.fresh_volume().await;
    let l1 = list(&check, d1).await;
    let l2 = list(&check, d2).await;
    for name in names.iter() {
        let moves: u32 = results.iter().map(|c| c.get(name).map_or(0, |c| c.0)).sum();
        let expect_d2 = moves % 2 == 1;
        let (here, there) = if expect_d2 { (&l2, &l1) } else { (&l1, &l2) };
        assert!(
            here.get(name).is_some_and(|(ino, _)| *ino == inos[name]),
            "{name}: {moves} successful moves, expected in {}; d1 {:?}, d2 {:?}",
            if expect_d2 { "d2" } else { "d1" },
            l1.keys(),
            l2.keys()
        );
        assert!(!there.contains_key(name), "{name} is in both directories");
    }
    assert_eq!(
        l1.len() + l2.len(),
        names.len(),
        "d1 {:?}, d2 {:?}",
        l1.keys(),
        l2.keys()
    );
    assert_eq!(
        nlink(&check, d1).await,
        2 + subdirs(&l1),
        "nlink of d1 ({:?})",
        l1.keys()
    );
    assert_eq!(
        nlink(&check, d2).await,
        2 + subdirs(&l2),
        "nlink of d2 ({:?})",
        l2.keys()
    );
    assert_eq!(nlink(&check, Ino::ROOT).await, 4);
    for (dir, listing) in [(d1, &l1), (d2, &l2)] {
        for (name, (ino, kind)) in listing {
            if *kind == FileType::Directory {
                let dotdot = check.lookup(&root(), *ino, b"..").await.expect("lookup ..");
                assert_eq!(dotdot.ino, dir, "'..' of {name}");
                assert_eq!(nlink(&check, *ino).await, 2, "nlink of {name}");
                let inner = check
                    .lookup(&root(), *ino, b"inner")
                    .await
                    .expect("inner file");
                assert_eq!(read_all(&check, inner.ino).await, name.as_bytes());
            } else {
                assert_eq!(read_all(&check, *ino).await, name.as_bytes());
                assert_eq!(nlink(&check, *ino).await, 1, "nlink of {name}");
            }
        }
    }
    let usage = cluster.usage().await;
    assert_eq!(usage.inodes, 1 + 2 + FILES as u64 + 2 * DIRS as u64);
    cluster.finish().await;
}

/// Engines create (O_EXCL) and unlink the same few names as fast as they can. Successful creates
/// and unlinks of a name must alternate, so their counts differ by whether the name exists at the
/// end; no inode may leak.
async fn racing_unlinks_and_creates(store: Store) {
    const ENGINES: usize = 4;
    const NAMES: usize = 3;
    const ITERATIONS: usize = 40;
    let Some(cluster) = Cluster::start(store, ENGINES, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let dir = mkdir(&vols[0], Ino::ROOT, "churn").await;
    let results = race(&vols, |engine, vol| async move {
        // name index -> (creates ok, unlinks ok)
        let mut counts = vec![(0u32, 0u32); NAMES];
        for i in 0..ITERATIONS {
            let n = (engine + i) % NAMES;
            let name = format!("n{n}");
            if (i + engine / 2) % 2 == 0 {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let r = vol
                    .create(&root(), dir, name.as_bytes(), 0o644, flags)
                    .await;
                match r {
                    Ok((_, fh)) => {
                        counts[n].0 += 1;
                        vol.release(&root(), fh).await.expect("release");
                    }
                    Err(e) if e.errno() == libc::EEXIST => {}
                    Err(e) => panic!("engine {engine}: create {name}: {e}"),
                }
            } else {
                match vol.unlink(&root(), dir, name.as_bytes()).await {
                    Ok(()) => counts[n].1 += 1,
                    Err(e) if e.errno() == libc::ENOENT => {}
                    Err(e) => panic!("engine {engine}: unlink {name}: {e}"),
                }
            }
        }
        counts
    })
    .await;
    let check = cluster.fresh_volume().await;
    let listing = list(&check, dir).await;
    let mut existing = 0;
    for n in 0..NAMES {
        let name = format!("n{n}");
        let creates: u32 = results.iter().map(|c| c[n].0).sum();
        let unlinks: u32 = results.iter().map(|c| c[n].1).sum();
        let exists = listing.contains_key(&name);
        assert_eq!(
            i64::from(creates) - i64::from(unlinks),
            i64::from(exists),
            "{name}: {creates} creates and {unlinks} unlinks succeeded, exists at the end: {exists}"
        );
        existing += u64::from(exists);
    }
    assert_eq!(listing.len() as u64, existing, "{:?}", listing.keys());
    assert_eq!(nlink(&check, dir).await, 2);
    assert_eq!(cluster.usage().await.inodes, 2 + existing);
    cluster.finish().await;
}

/// Engines make and remove the same directory, and create/remove a file of their own inside it
/// whenever it exists. mkdir and rmdir successes alternate; a file is never created inside a
/// removed directory (it would leak an inode), and rmdir never removes a non-empty directory.
async fn racing_mkdir_and_rmdir(store: Store) {
    const ENGINES: usize = 4;
    const ITERATIONS: usize = 30;
    let Some(cluster) = Cluster::start(store, ENGINES, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let results = race(&vols, |engine, vol| async move {
        let (mut mkdirs, mut rmdirs) = (0u32, 0u32);
        let mine = format!("f{engine}");
        for i in 0..ITERATIONS {
            if (i + engine) % 2 == 0 {
                match vol.mkdir(&root(), Ino::ROOT, b"x", 0o777).await {
                    Ok(_) => mkdirs += 1,
                    Err(e) if e.errno() == libc::EEXIST => {}
                    Err(e) => panic!("engine {engine}: mkdir x: {e}"),
                }
                // Whoever made it: try to put a file inside, then take it out again.
                let Ok(x) = vol.lookup(&root(), Ino::ROOT, b"x").await else {
                    continue;
                };
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                match vol
                    .create(&root(), x.ino, mine.as_bytes(), 0o644, flags)
                    .await
                {
                    Ok((_, fh)) => {
                        vol.release(&root(), fh).await.expect("release");
                        // Nobody else may remove x while the file is in it.
                        vol.unlink(&root(), x.ino, mine.as_bytes())
                            .await
                            .unwrap_or_else(|e| panic!("engine {engine}: unlink x/{mine}: {e}"));
                    }
                    // x was removed after the lookup.
                    Err(e) if e.errno() == libc::ENOENT => {}
                    Err(e) => panic!("engine {engine}: create x/{mine}: {e}"),
                }
            } else {
                match vol.rmdir(&root(), Ino::ROOT, b"x").await {
                    Ok(()) => rmdirs += 1,
                    Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTEMPTY) => {}
                    Err(e) => panic!("engine {engine}: rmdir x: {e}"),
                }
            }
        }
        (mkdirs, rmdirs)
    })
    .await;
    let mkdirs: u32 = results.iter().map(|r| r.0).sum();
    let rmdirs: u32 = results.iter().map(|r| r.1).sum();
    let check = cluster.fresh_volume().await;
    let listing = list(&check, Ino::ROOT).await;
    let exists = listing.contains_key("x");
    assert_eq!(
        i64::from(mkdirs) - i64::from(rmdirs),
        i64::from(exists),
        "{mkdirs} mkdirs and {rmdirs} rmdirs succeeded; x exists: {exists}"
    );
    assert!(mkdirs > 1, "the race never repeated ({mkdirs} mkdirs)");
    assert_eq!(nlink(&check, Ino::ROOT).await, 2 + u32::from(exists));
    if let Some((x, _)) = listing.get("x") {
        assert!(list(&check, *x).await.is_empty(), "x is not empty");
        assert_eq!(nlink(&check, *x).await, 2);
    }
    assert_eq!(cluster.usage().await.inodes, 1 + u64::from(exists));
    cluster.finish().await;
}

/// Engines rename their own file onto one shared target name at once (replacing whatever is
/// there), round after round. Every rename succeeds; the target ends as one of the sources, every
/// source name is gone, and every replaced inode is freed (no leaked inode or byte).
async fn racing_renames_onto_one_target(store: Store) {
    const ENGINES: usize = 4;
    const ROUNDS: usize = 10;
    let Some(cluster) = Cluster::start(store, ENGINES, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let dir = mkdir(&vols[0], Ino::ROOT, "dir").await;
    for round in 0..ROUNDS {
        let mut sources = BTreeMap::new();
        for (e, vol) in vols.iter().enumerate() {
            let name = format!("s{e}");
            let ino = new_file(
                vol,
                dir,
                &name,
                format!("round {round} engine {e}").as_bytes(),
            )
            .await;
            sources.insert(ino, e);
        }
        let results = race(&vols, |e, vol| async move {
            let name = format!("s{e}");
            vol.rename(
                &root(),
                dir,
                name.as_bytes(),
                dir,
                b"t",
                RenameFlags::default(),
            )
            .await
        })
        .await;
        for (e, r) in results.iter().enumerate() {
            assert!(
                r.is_ok(),
                "round {round}: rename s{e} -> t: {}",
                describe(r)
            );
        }
        let listing = list(&vols[0], dir).await;
        assert_eq!(listing.keys().collect::<Vec<_>>(), ["t"], "round {round}");
        let (t, _) = listing["t"];
        let winner = sources
            .get(&t)
            .unwrap_or_else(|| panic!("round {round}: t is inode {t}, not a source"));
        assert_eq!(
            read_all(&vols[0], t).await,
            format!("round {round} engine {winner}").as_bytes()
        );
        assert_eq!(nlink(&vols[0], t).await, 1);
        let usage = cluster.usage().await;
        assert_eq!(
            (usage.inodes, usage.bytes),
            (3, 4096),
            "round {round}: replaced inodes must be freed"
        );
    }
    cluster.finish().await;
}

/// Engines add and remove hard links to one file, each under its own names and all under one
/// shared name. Every link and unlink locks the file, so its link count always equals its names.
async fn racing_links_and_unlinks(store: Store) {
    const ENGINES: usize = 4;
    const ITERATIONS: usize = 24;
    let Some(cluster) = Cluster::start(store, ENGINES, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let dir = mkdir(&vols[0], Ino::ROOT, "links").await;
    let file = new_file(&vols[0], dir, "file", b"data").await;
    let results = race(&vols, |e, vol| async move {
        // (shared links made, shared unlinks made)
        let (mut linked, mut unlinked) = (0u32, 0u32);
        for i in 0..ITERATIONS {
            let own = format!("l{e}-{}", i % 3);
            match i % 4 {
                0 | 1 => {
                    let r = vol.link(&root(), file, dir, own.as_bytes()).await;
                    assert!(
                        r.is_ok() || errno(&r) == Some(libc::EEXIST),
                        "engine {e}: link {own}: {}",
                        describe(&r)
                    );
                    let r = vol.link(&root(), file, dir, b"shared").await;
                    match errno(&r) {
                        None => linked += 1,
                        Some(libc::EEXIST) => {}
                        _ => panic!("engine {e}: link shared: {}", describe(&r)),
                    }
                }
                _ => {
                    let r = vol.unlink(&root(), dir, own.as_bytes()).await;
                    assert!(
                        r.is_ok() || errno(&r) == Some(libc::ENOENT),
                        "engine {e}: unlink {own}: {}",
                        describe(&r)
                    );
                    let r = vol.unlink(&root(), dir, b"shared").await;
                    match errno(&r) {
                        None => unlinked += 1,
                        Some(libc::ENOENT) => {}
                        _ => panic!("engine {e}: unlink shared: {}", describe(&r)),
                    }
                }
            }
        }
        (linked, unlinked)
    })
    .await;
    let check = cluster.fresh_volume().await;
    let listing = list(&check, dir).await;
    for (name, (ino, _)) in &listing {
        assert_eq!(*ino, file, "{name} names another inode");
    }
    assert_eq!(
        nlink(&check, file).await,
        listing.len() as u32,
        "names: {:?}",
        listing.keys()
    );
    let linked: u32 = results.iter().map(|r| r.0).sum();
    let unlinked: u32 = results.iter().map(|r| r.1).sum();
    assert_eq!(
        i64::from(linked) - i64::from(unlinked),
        i64::from(listing.contains_key("shared")),
        "{linked} links and {unlinked} unlinks of the shared name succeeded"
    );
    assert_eq!(read_all(&check, file).await, b"data");
    assert_eq!(cluster.usage().await.inodes, 3);
    cluster.finish().await;
}

/// Engines set the same extended attributes with XATTR_CREATE at once: exactly one wins each.
async fn racing_exclusive_xattrs(store: Store) {
    const ENGINES: usize = 4;
    const NAMES: usize = 12;
    let Some(cluster) = Cluster::start(store, ENGINES, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let file = new_file(&vols[0], Ino::ROOT, "file", b"").await;
    let results = race(&vols, |e, vol| async move {
        let mut out = Vec::new();
        for i in 0..NAMES {
            let name = format!("user.n{i}");
            let value = format!("engine {e}");
            out.push(
                vol.setxattr(
                    &root(),
                    file,
                    name.as_bytes(),
                    value.as_bytes(),
                    tarbox_fs::XattrMode::Create,
                )
                .await,
            );
        }
        out
    })
    .await;
    let check = cluster.fresh_volume().await;
    assert_eq!(
        check
            .listxattr(&root(), file)
            .await
            .expect("listxattr")
            .len(),
        NAMES
    );
    for i in 0..NAMES {
        let name = format!("user.n{i}");
        let winners: Vec<usize> = (0..ENGINES).filter(|e| results[*e][i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "{name}: winners {winners:?}");
        for (e, r) in results.iter().enumerate() {
            if r[i].is_err() {
                assert_eq!(
                    errno(&r[i]),
                    Some(libc::EEXIST),
                    "{name} by {e}: {}",
                    describe(&r[i])
                );
            }
        }
        let value = check
            .getxattr(&root(), file, name.as_bytes())
            .await
            .expect("getxattr");
        assert_eq!(value, format!("engine {}", winners[0]).as_bytes(), "{name}");
    }
    cluster.finish().await;
}

/// Every directory's `..` chain reaches the root within `limit` steps, and every directory is
/// reachable from the root through listings: the tree is acyclic and connected.
async fn assert_tree_sound(vol: &Volume, dirs: &BTreeMap<String, Ino>) {
    for (name, ino) in dirs {
        let mut cur = *ino;
        let mut path = vec![name.clone()];
        for _ in 0..=dirs.len() {
            if cur == Ino::ROOT {
                break;
            }
            cur = vol
                .lookup(&root(), cur, b"..")
                .await
                .expect("lookup ..")
                .ino;
            path.push(cur.to_string());
        }
        assert_eq!(
            cur,
            Ino::ROOT,
            "'..' chain from {name} does not reach the root: {path:?}"
        );
    }
    let mut reachable = BTreeSet::new();
    let mut stack = vec![Ino::ROOT];
    while let Some(dir) = stack.pop() {
        for (name, (ino, kind)) in list(vol, dir).await {
            if kind == FileType::Directory {
                assert!(
                    reachable.insert(ino),
                    "directory {name} ({ino}) reachable twice"
                );
                let dotdot = vol
                    .lookup(&root(), ino, b"..")
                    .await
                    .expect("lookup ..")
                    .ino;
                assert_eq!(
                    dotdot, dir,
                    "'..' of {name} is not the directory listing it"
                );
                stack.push(ino);
            }
        }
    }
    for (name, ino) in dirs {
        assert!(
            reachable.contains(ino),
            "directory {name} is unreachable from the root"
        );
    }
}

/// Two engines move `a` into `b` and `b` into `a` at the same time, many times over. Exactly one
/// may succeed: the other must see the first's result (EINVAL, a directory into its own
/// descendant) and never create a cycle detached from the root.
async fn racing_directory_renames_never_make_a_cycle(store: Store) {
    const ROUNDS: usize = 20;
    let Some(cluster) = Cluster::start(store, 2, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let a = mkdir(&vols[0], Ino::ROOT, "a").await;
    let b = mkdir(&vols[0], Ino::ROOT, "b").await;
    let dirs = BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]);
    for round in 0..ROUNDS {
        let results = race(&vols, |engine, vol| async move {
            let (name, target): (&[u8], Ino) = if engine == 0 { (b"a", b) } else { (b"b", a) };
            vol.rename(
                &root(),
                Ino::ROOT,
                name,
                target,
                name,
                RenameFlags::default(),
            )
            .await
        })
        .await;
        let ok: Vec<usize> = (0..2).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(
            ok.len(),
            1,
            "round {round}: a->b {}, b->a {}",
            describe(&results[0]),
            describe(&results[1])
        );
        let loser = 1 - ok[0];
        assert!(
            matches!(errno(&results[loser]), Some(libc::EINVAL | libc::ENOENT)),
            "round {round}: the losing rename failed with {}",
            describe(&results[loser])
        );
        assert_tree_sound(&vols[1], &dirs).await;
        // Put the moved directory back at the top.
        let (parent, name): (Ino, &[u8]) = if ok[0] == 0 { (b, b"a") } else { (a, b"b") };
        vols[0]
            .rename(
                &root(),
                parent,
                name,
                Ino::ROOT,
                name,
                RenameFlags::default(),
            )
            .await
            .expect("move back");
    }
    let check = cluster.fresh_volume().await;
    assert_tree_sound(&check, &dirs).await;
    assert_eq!(nlink(&check, Ino::ROOT).await, 4);
    cluster.finish().await;
}

/// Engine `i` moves directory `a{i}` (in `p{i}`) into `a{i+1}/c{i+1}`, the child of the next one,
/// all at the same time. The moves touch disjoint inodes (each locks its source parent, target
/// parent and the directory moved), so nothing but the engine's own serialization of
/// cross-directory directory renames prevents a cycle `a0 → c1 → a1 → c0 → a0` detached from the
/// root. With two engines exactly one move may succeed (the other is then a move into its own
/// descendant: EINVAL); with three, one or two. The tree must stay acyclic and connected, with
/// correct link counts.
async fn cross_subtree_moves(store: Store, engines: usize, rounds: usize) {
    let Some(cluster) = Cluster::start(store, engines, small_blocks()).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let v = &vols[0];
    let mut dirs = BTreeMap::new();
    let (mut p, mut a, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..engines {
        p.push(mkdir(v, Ino::ROOT, &format!("p{i}")).await);
        a.push(mkdir(v, p[i], &format!("a{i}")).await);
        c.push(mkdir(v, a[i], &format!("c{i}")).await);
        dirs.insert(format!("p{i}"), p[i]);
        dirs.insert(format!("a{i}"), a[i]);
        dirs.insert(format!("c{i}"), c[i]);
    }
    let (p, c) = (Arc::new(p), Arc::new(c));
    for round in 0..rounds {
        let results = race(&vols, |i, vol| {
            let (p, c) = (p.clone(), c.clone());
            async move {
                let name = format!("a{i}");
                let target = c[(i + 1) % engines];
                vol.rename(
                    &root(),
                    p[i],
                    name.as_bytes(),
                    target,
                    name.as_bytes(),
                    RenameFlags::default(),
                )
                .await
            }
        })
        .await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let outcome: Vec<String> = results.iter().map(describe).collect();
        assert!(
            (1..engines).contains(&ok),
            "round {round}: {ok} of {engines} moves succeeded: {outcome:?}"
        );
        for r in &results {
            assert!(
                r.is_ok() || matches!(errno(r), Some(libc::EINVAL | libc::ENOENT)),
                "round {round}: {outcome:?}"
            );
        }
        assert_tree_sound(v, &dirs).await;
        for (name, ino) in std::iter::once(("root".to_string(), Ino::ROOT)).chain(dirs.clone()) {
            let listing = list(v, ino).await;
            assert_eq!(
                nlink(v, ino).await,
                2 + subdirs(&listing),
                "round {round}: nlink of {name}"
            );
        }
        // Every a{i} back into its p{i}.
        for (i, ai) in a.iter().enumerate() {
            let parent = v.lookup(&root(), *ai, b"..").await.expect("lookup ..").ino;
            if parent != p[i] {
                let name = format!("a{i}");
                v.rename(
                    &root(),
                    parent,
                    name.as_bytes(),
                    p[i],
                    name.as_bytes(),
                    RenameFlags::default(),
                )
                .await
                .expect("move back");
            }
        }
    }
    let check = cluster.fresh_volume().await;
    assert_tree_sound(&check, &dirs).await;
    cluster.finish().await;
}

async fn racing_cross_subtree_directory_moves(store: Store) {
    cross_subtree_moves(store, 2, 20).await;
}

async fn racing_three_way_cross_subtree_moves(store: Store) {
    cross_subtree_moves(store, 3, 15).await;
}

// ---------------------------------------------------------------------------------------------
// Data races
// ---------------------------------------------------------------------------------------------

/// The byte `i` of region `r`.
fn region_byte(r: usize, i: u64) -> u8 {
    (((i / 7) as u8).wrapping_mul(31)).wrapping_add(r as u8 * 50) | 1
}

/// Writers on different engines fill different regions of one file (which none of them created),
/// in chunks with fsyncs in between, all at once; a reader on an engine opened afterwards must see
/// every region and the full size.
///
/// With `quota`, the tenant has a byte quota (large enough): writes then reserve quota ahead
/// from each engine's own view of the file, which the flushes must reconcile.
async fn concurrent_writers(store: Store, region: u64, quota: Option<u64>) {
    const WRITERS: usize = 3;
    const CHUNK: u64 = 3000;
    let options = TenantOptions {
        quota: Quota {
            bytes: quota,
            inodes: None,
        },
        ..small_blocks()
    };
    let Some(cluster) = Cluster::start(store, WRITERS, options).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let file = new_file(&vols[0], Ino::ROOT, "shared", b"").await;
    race(&vols, |w, vol| async move {
        let fh = vol
            .open(&root(), file, libc::O_WRONLY)
            .await
            .expect("open for writing");
        let start = w as u64 * region;
        let mut pos = 0;
        while pos < region {
            let n = CHUNK.min(region - pos);
            let data: Vec<u8> = (pos..pos + n).map(|i| region_byte(w, i)).collect();
            vol.write(&root(), fh, start + pos, &data)
                .await
                .expect("write");
            vol.fsync(&root(), fh, false).await.expect("fsync");
            pos += n;
        }
        vol.release(&root(), fh).await.expect("release");
    })
    .await;
    let reader = cluster.fresh_volume().await;
    let size = WRITERS as u64 * region;
    assert_eq!(
        reader.getattr(&root(), file).await.expect("getattr").size,
        size
    );
    let data = read_all(&reader, file).await;
    assert_eq!(data.len() as u64, size);
    for w in 0..WRITERS {
        let start = w as u64 * region;
        for i in 0..region {
            let (got, want) = (data[(start + i) as usize], region_byte(w, i));
            assert_eq!(
                got,
                want,
                "byte {} (region {w}, offset {i} in it): got {got:#04x}, want {want:#04x}",
                start + i
            );
        }
    }
    assert_eq!(cluster.usage().await.bytes, size.div_ceil(4096) * 4096);
    cluster.finish().await;
}

/// Regions of whole blocks: no block is shared between writers.
async fn concurrent_writers_to_aligned_regions(store: Store) {
    concurrent_writers(store, 4 * 4096, None).await;
}

/// Regions that share their boundary blocks with the neighbouring writers.
async fn concurrent_writers_to_unaligned_regions(store: Store) {
    concurrent_writers(store, 10_000, None).await;
}

/// Unaligned regions under a byte quota: usage must end as the charge of the final size.
async fn concurrent_writers_to_one_file_under_a_byte_quota(store: Store) {
    concurrent_writers(store, 10_000, Some(1 << 20)).await;
}

/// Tenant byte quota under concurrent appenders on several engines: each appends 64 KiB writes
/// until ENOSPC. Usage never exceeds the quota (sampled while they run, and at the end), every
/// writer sees ENOSPC, the files fit in the quota, and the quota is not wasted by more than the
/// writers' reservations.
async fn byte_quota_holds_under_concurrent_writers(store: Store) {
    const WRITERS: usize = 4;
    const WRITE: u64 = 64 << 10;
    const BLOCK: u64 = 64 << 10;
    const QUOTA: u64 = 2 << 20;
    let options = TenantOptions {
        block_size: BLOCK as u32,
        quota: Quota {
            bytes: Some(QUOTA),
            inodes: None,
        },
        ..TenantOptions::default()
    };
    let Some(cluster) = Cluster::start(store, WRITERS, options).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let mut files = Vec::new();
    for w in 0..WRITERS {
        files.push(new_file(&vols[0], Ino::ROOT, &format!("w{w}"), b"").await);
    }
    let files = Arc::new(files);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let engine = cluster.engines[0].clone();
        let tenant = cluster.tenant.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut max = 0;
            let mut samples = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let usage = engine
                    .tenant_info(&tenant)
                    .await
                    .expect("tenant_info")
                    .usage;
                max = max.max(usage.bytes);
                samples += 1;
                tokio::task::yield_now().await;
            }
            (max, samples)
        })
    };
    let written = race(&vols, |w, vol| {
        let files = files.clone();
        async move {
            let fh = vol
                .open(&root(), files[w], libc::O_WRONLY | libc::O_APPEND)
                .await
                .expect("open");
            let data = vec![w as u8 + 1; WRITE as usize];
            let mut total = 0u64;
            let mut writes = 0u32;
            let outcome = loop {
                match vol.write(&root(), fh, 0, &data).await {
                    Ok(n) => total += u64::from(n),
                    Err(e) => break e,
                }
                writes += 1;
                if writes % 4 == 0 {
                    if let Err(e) = vol.fsync(&root(), fh, false).await {
                        break e;
                    }
                }
                assert!(
                    total <= QUOTA,
                    "writer {w} wrote {total} bytes, more than the quota"
                );
            };
            assert_eq!(
                outcome.errno(),
                libc::ENOSPC,
                "writer {w} stopped with {outcome}"
            );
            vol.release(&root(), fh)
                .await
                .expect("release after ENOSPC");
            total
        }
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_seen, samples) = monitor.await.expect("monitor");
    assert!(
        max_seen <= QUOTA,
        "usage reached {max_seen} bytes over a {QUOTA}-byte quota"
    );
    assert!(samples > 0);
    let check = cluster.fresh_volume().await;
    let mut sizes = 0;
    let mut charged = 0;
    for (w, file) in files.iter().enumerate() {
        let size = check.getattr(&root(), *file).await.expect("getattr").size;
        assert_eq!(
            size, written[w],
            "writer {w}: file size against bytes written"
        );
        sizes += size;
        charged += size.div_ceil(4096) * 4096;
    }
    let usage = cluster.usage().await;
    assert!(
        sizes <= QUOTA,
        "files hold {sizes} bytes over a {QUOTA}-byte quota"
    );
    assert!(
        usage.bytes <= QUOTA,
        "usage {} over the quota {QUOTA}",
        usage.bytes
    );
    assert_eq!(usage.bytes, charged, "usage after every handle closed");
    // Each writer stopped when less than one write (plus the others' read-ahead reservations)
    // was left.
    let slack = WRITE + WRITERS as u64 * (BLOCK + 4096);
    assert!(
        sizes + slack >= QUOTA,
        "only {sizes} of {QUOTA} bytes could be written"
    );
    cluster.finish().await;
}

/// Tenant inode quota under concurrent creates: engines create files until ENOSPC. The tenant
/// ends exactly at its inode limit, never beyond, with every created file listed.
async fn inode_quota_holds_under_concurrent_creates(store: Store) {
    const ENGINES: usize = 4;
    const INODES: u64 = 50;
    let options = TenantOptions {
        block_size: 4096,
        quota: Quota {
            bytes: None,
            inodes: Some(INODES),
        },
        ..TenantOptions::default()
    };
    let Some(cluster) = Cluster::start(store, ENGINES, options).await else {
        return;
    };
    let vols = cluster.volumes().await;
    let created = race(&vols, |engine, vol| async move {
        let mut created = Vec::new();
        for i in 0.. {
            let name = format!("e{engine}-{i}");
            let r = if i % 5 == 4 {
                vol.mkdir(&root(), Ino::ROOT, name.as_bytes(), 0o755)
                    .await
                    .map(|_| ())
            } else {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                match vol
                    .create(&root(), Ino::ROOT, name.as_bytes(), 0o644, flags)
                    .await
                {
                    Ok((_, fh)) => vol.release(&root(), fh).await,
                    Err(e) => Err(e),
                }
            };
            match r {
                Ok(()) => created.push(name),
                Err(e) => {
                    assert_eq!(
                        e.errno(),
                        libc::ENOSPC,
                        "engine {engine}: creating {name}: {e}"
                    );
                    break;
                }
            }
        }
        created
    })
    .await;
    let all: BTreeSet<String> = created.into_iter().flatten().collect();
    let check = cluster.fresh_volume().await;
    let listing = list(&check, Ino::ROOT).await;
    let listed: BTreeSet<String> = listing.keys().cloned().collect();
    assert_eq!(listed, all, "listing against successful creates");
    let usage = cluster.usage().await;
    assert_eq!(
        usage.inodes, INODES,
        "every engine stopped at ENOSPC, so the limit is reached exactly"
    );
    assert_eq!(all.len() as u64 + 1, INODES);
    assert_eq!(nlink(&check, Ino::ROOT).await, 2 + subdirs(&listing));
    cluster.finish().await;
}
