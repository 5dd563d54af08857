//! Concurrency: several engines on one store race on one tenant, as several machines sharing one
//! database would. Each test runs on PostgreSQL (one connection pool per engine, as separate
//! processes) and on one shared in-memory store (`Engine::with_backend(backend.clone(), …)`).
//! This file races on names (creates, renames, unlinks, mkdir/rmdir, links, xattrs); directory
//! moves that could make a cycle are in `concurrency_tree.rs`, data and quota races in
//! `concurrency_data.rs`, and the cluster and helpers they share in `concurrency_common/mod.rs`.
//!
//! Every test asserts invariants that hold whatever the interleaving: exactly one winner per
//! exclusive create, success counts that match the final state, link counts, no lost or
//! duplicated entries, an acyclic tree, data of every writer present, and usage within quota. None
//! sleeps: tasks start together on a barrier and run as fast as they can.

mod concurrency_common;

use std::collections::BTreeMap;
use std::sync::Arc;

use tarbox_fs::Filesystem as _;
use tarbox_fs::{FileType, Ino, RenameFlags};

use concurrency_common::{
    Cluster, Store, describe, errno, list, mkdir, new_file, nlink, on_both_stores, race, read_all,
    root, small_blocks, subdirs,
};

on_both_stores!(
    racing_exclusive_creates,
    racing_renames_between_two_directories,
    racing_unlinks_and_creates,
    racing_mkdir_and_rmdir,
    racing_renames_onto_one_target,
    racing_links_and_unlinks,
    racing_exclusive_xattrs,
);

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
