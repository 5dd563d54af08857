//! Concurrency: several engines on one store write one file, or fill a tenant's byte or inode
//! quota, at the same time; every writer's data is present and usage stays within quota. Each test
//! runs on PostgreSQL and on one shared in-memory store (see `concurrency.rs`).

mod concurrency_common;

use std::collections::BTreeSet;
use std::sync::Arc;

use tarbox_fs::Filesystem as _;
use tarbox_fs::{Ino, Quota, TenantOptions};

use concurrency_common::{
    Cluster, Store, list, new_file, nlink, on_both_stores, race, read_all, root, small_blocks,
    subdirs,
};

on_both_stores!(
    concurrent_writers_to_aligned_regions,
    concurrent_writers_to_unaligned_regions,
    concurrent_writers_to_one_file_under_a_byte_quota,
    byte_quota_holds_under_concurrent_writers,
    inode_quota_holds_under_concurrent_creates,
);

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
