//! Load: 64 clients at once on one engine (one mount), and 16 on each of four engines (four
//! mounts of one tenant), each doing mixed metadata and data work: create, write, fsync, read
//! back, rename, stat, xattrs, unlink in a directory of its own, and creates and listings in a
//! directory all share. More clients than the connection pool has connections (16), so the pool's
//! exhaustion is waited on.
//!
//! Every operation must succeed: no error, no deadlock (the test ends). Afterwards, read by an
//! engine that saw none of it: each client's last file holds what it wrote, the shared directory
//! holds every name created in it, and fsck is clean (usage charged equals the tree). Bounded by
//! rounds, not by time; runs on PostgreSQL and on one shared in-memory store.

mod concurrency_common;

use std::collections::BTreeSet;

use concurrency_common::*;
use tarbox_fs::Filesystem as _;
use tarbox_fs::{FsError, Ino, RenameFlags, TenantOptions, XattrMode};
use tarbox_tests::{names_as, noise};

/// What each client does `rounds` times; returns its directory and the content of its last file.
async fn client(
    v: tarbox_fs::Volume,
    shared: Ino,
    id: usize,
    rounds: usize,
) -> Result<(Ino, Vec<u8>), (String, FsError)> {
    let me = root();
    let at = |what: &str, r: usize| format!("client {id} round {r}: {what}");
    let mine = v
        .mkdir(&me, Ino::ROOT, format!("c{id}").as_bytes(), 0o755)
        .await
        .map_err(|e| (at("mkdir", 0), e))?
        .ino;
    let mut last = Vec::new();
    for r in 0..rounds {
        let data = noise(
            4096 + (id * 7919 + r * 104_729) % (96 << 10),
            (id * 1000 + r) as u64,
        );
        let name = format!("f{r}");
        let (attr, fh) = v
            .create(&me, mine, name.as_bytes(), 0o644, libc::O_RDWR)
            .await
            .map_err(|e| (at("create", r), e))?;
        v.write(&me, fh, 0, &data)
            .await
            .map_err(|e| (at("write", r), e))?;
        if r % 2 == 0 {
            v.fsync(&me, fh, false)
                .await
                .map_err(|e| (at("fsync", r), e))?;
        }
        let read = v
            .read(&me, fh, 0, 1 << 20)
            .await
            .map_err(|e| (at("read", r), e))?;
        v.release(&me, fh)
            .await
            .map_err(|e| (at("release", r), e))?;
        if read[..] != data[..] {
            return Err((at("read back differs", r), FsError::Invalid("data")));
        }
        let kept = format!("g{r}");
        v.rename(
            &me,
            mine,
            name.as_bytes(),
            mine,
            kept.as_bytes(),
            RenameFlags::default(),
        )
        .await
        .map_err(|e| (at("rename", r), e))?;
        v.getattr(&me, attr.ino)
            .await
            .map_err(|e| (at("getattr", r), e))?;
        v.setxattr(
            &me,
            attr.ino,
            b"user.round",
            r.to_string().as_bytes(),
            XattrMode::Any,
        )
        .await
        .map_err(|e| (at("setxattr", r), e))?;
        v.mknod(
            &me,
            shared,
            format!("s-{id}-{r}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
        )
        .await
        .map_err(|e| (at("mknod shared", r), e))?;
        if r % 3 == 0 {
            let fh = v
                .opendir(&me, shared)
                .await
                .map_err(|e| (at("opendir", r), e))?;
            let page = v.readdir(&me, shared, fh, 0).await;
            v.releasedir(&me, fh)
                .await
                .map_err(|e| (at("releasedir", r), e))?;
            page.map_err(|e| (at("readdir shared", r), e))?;
        }
        if r > 0 {
            v.unlink(&me, mine, format!("g{}", r - 1).as_bytes())
                .await
                .map_err(|e| (at("unlink", r), e))?;
        }
        last = data;
    }
    Ok((mine, last))
}

async fn mixed_load(store: Store, engines: usize, clients: usize, rounds: usize) {
    let Some(cluster) = Cluster::start(store, engines, TenantOptions::default()).await else {
        return;
    };
    let volumes = cluster.volumes().await;
    let shared = volumes[0]
        .mkdir(&root(), Ino::ROOT, b"shared", 0o777)
        .await
        .expect("mkdir shared")
        .ino;
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(volumes[id % engines].clone(), shared, id, rounds)))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        match task.await.expect("client task") {
            Ok(done) => results.push(done),
            Err((what, e)) => panic!("{what}: {e} (errno {})", e.errno()),
        }
    }

    // What an engine that saw none of it reads.
    let fresh = cluster.fresh_volume().await;
    let me = root();
    let last = format!("g{}", rounds - 1);
    for (id, (dir, data)) in results.iter().enumerate() {
        let names = names_as(&fresh, &me, *dir).await;
        assert_eq!(names, vec![last.clone()], "client {id}'s directory");
        let file = fresh
            .lookup(&me, *dir, last.as_bytes())
            .await
            .expect("lookup last");
        let fh = fresh
            .open(&me, file.ino, libc::O_RDONLY)
            .await
            .expect("open");
        let read = fresh.read(&me, fh, 0, 1 << 20).await.expect("read");
        fresh.release(&me, fh).await.expect("release");
        assert!(read[..] == data[..], "client {id}'s last file differs");
    }
    let shared_names: BTreeSet<String> = names_as(&fresh, &me, shared).await.into_iter().collect();
    let expected: BTreeSet<String> = (0..clients)
        .flat_map(|id| (0..rounds).map(move |r| format!("s-{id}-{r}")))
        .collect();
    assert_eq!(shared_names, expected, "the shared directory");
    let report = cluster.engines[0]
        .fsck(&cluster.tenant, &|_| {})
        .await
        .expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
    cluster.finish().await;
}

/// 64 clients on one mount.
async fn sixty_four_clients_on_one_mount(store: Store) {
    mixed_load(store, 1, 64, 8).await;
}

/// 64 clients over four mounts of one tenant.
async fn sixty_four_clients_on_four_mounts(store: Store) {
    mixed_load(store, 4, 64, 8).await;
}

on_both_stores!(
    sixty_four_clients_on_one_mount,
    sixty_four_clients_on_four_mounts
);
