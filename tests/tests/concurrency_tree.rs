//! Concurrency: several engines on one store move directories at the same time, into each other
//! and across subtrees; the tree must stay acyclic and connected, with correct link counts. Each
//! test runs on PostgreSQL and on one shared in-memory store (see `concurrency.rs`).

mod concurrency_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tarbox_fs::Filesystem as _;
use tarbox_fs::{FileType, Ino, RenameFlags, Volume};

use concurrency_common::{
    Cluster, Store, describe, errno, list, mkdir, nlink, on_both_stores, race, root, small_blocks,
    subdirs,
};

on_both_stores!(
    racing_directory_renames_never_make_a_cycle,
    racing_cross_subtree_directory_moves,
    racing_three_way_cross_subtree_moves,
);

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
    // Rounds are judged on the store: a racer may not have heard of the winner yet.
    let observer = cluster.observer().await;
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
        assert_tree_sound(&observer, &dirs).await;
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
    // Rounds are judged on the store: a racer may not have heard of the winner yet.
    let observer = cluster.observer().await;
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
        assert_tree_sound(&observer, &dirs).await;
        for (name, ino) in std::iter::once(("root".to_string(), Ino::ROOT)).chain(dirs.clone()) {
            let listing = list(&observer, ino).await;
            assert_eq!(
                nlink(&observer, ino).await,
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
