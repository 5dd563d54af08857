//! Layer benchmarks on every available backend:
//! - `checkpoint/<backend>/<files>`: the cost of a checkpoint on a tree of 100 and of 100,000
//!   files; it should not grow with the tree (a checkpoint copies nothing).
//! - `layer_depth/<op>/<backend>/<layers>`: lookup+stat and a 4 KiB read of a file written in the
//!   base layer, seen through 1 and through 100 layers; the aim is under 1.5x.
//!
//! `cargo bench -p tarbox-benches --bench layers`. Populating 100,000 files on PostgreSQL takes a
//! minute or two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tarbox_benches::{backends, fresh_volume, runtime};
use tarbox_fs::Filesystem as _;
use tarbox_fs::LayerRef;
use tarbox_fs::{Caller, Ino, Volume};

const BLOCK: u32 = 256 << 10;

/// `n` empty files in 100 directories, created by 16 concurrent tasks.
async fn populate(vol: &Volume, n: usize) {
    let me = Caller::root();
    let mut dirs = Vec::new();
    for d in 0..100 {
        let attr = vol
            .mkdir(&me, Ino::ROOT, format!("d{d}").as_bytes(), 0o755)
            .await
            .expect("mkdir");
        dirs.push(attr.ino);
    }
    let dirs = Arc::new(dirs);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (vol, dirs, me) = (vol.clone(), dirs.clone(), me.clone());
            tokio::spawn(async move {
                for i in (t..n).step_by(16) {
                    let dir = dirs[i % dirs.len()];
                    vol.mknod(
                        &me,
                        dir,
                        format!("f{i}").as_bytes(),
                        libc::S_IFREG | 0o644,
                        0,
                    )
                    .await
                    .expect("mknod");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("populate task");
    }
}

fn checkpoint(c: &mut Criterion) {
    let rt = runtime();
    let engines = rt.block_on(backends());
    let mut g = c.benchmark_group("checkpoint");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for (name, engine) in &engines {
        for files in [100usize, 100_000] {
            let vol = rt.block_on(async {
                let vol = fresh_volume(engine, BLOCK).await;
                populate(&vol, files).await;
                vol
            });
            // Each measured checkpoint is undone by switching back here and dropping it.
            let base = "populated".to_string();
            rt.block_on(vol.layers().checkpoint(&base, ""))
                .expect("checkpoint");
            let mut n = 0u64;
            g.bench_function(BenchmarkId::new(*name, files), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (vol, base) = (vol.clone(), base.clone());
                    let start_n = n;
                    n += iters;
                    async move {
                        let mut spent = Duration::ZERO;
                        for i in 0..iters {
                            let label = format!("cp-{}", start_n + i);
                            let t0 = Instant::now();
                            vol.layers()
                                .checkpoint(&label, "")
                                .await
                                .expect("checkpoint");
                            spent += t0.elapsed();
                            // Keep the tree small: back to the base, and the checkpoint gone.
                            vol.layers()
                                .switch_to(&LayerRef::from(&base))
                                .await
                                .expect("switch");
                            vol.layers()
                                .drop_layer(&LayerRef::from(&label), false)
                                .await
                                .expect("drop");
                        }
                        spent
                    }
                });
            });
        }
    }
    g.finish();
}

fn layer_depth(c: &mut Criterion) {
    let rt = runtime();
    let engines = rt.block_on(backends());
    let me = Caller::root();
    let mut g = c.benchmark_group("layer_depth");
    g.measurement_time(Duration::from_secs(4)).sample_size(20);
    for (name, engine) in &engines {
        for layers in [1usize, 100] {
            let (vol, dir, file) = rt.block_on(async {
                let vol = fresh_volume(engine, BLOCK).await;
                populate(&vol, 1000).await;
                let dir = vol.lookup(&me, Ino::ROOT, b"d7").await.expect("d7").ino;
                let (attr, fh) = vol
                    .create(&me, dir, b"data", 0o644, libc::O_WRONLY)
                    .await
                    .expect("create");
                vol.write(&me, fh, 0, &vec![7u8; 1 << 20])
                    .await
                    .expect("write");
                vol.release(&me, fh).await.expect("release");
                // Each further layer changes something, as an agent between checkpoints would.
                for l in 1..layers {
                    vol.mknod(
                        &me,
                        Ino::ROOT,
                        format!("layer-{l}").as_bytes(),
                        libc::S_IFREG | 0o644,
                        0,
                    )
                    .await
                    .expect("mknod");
                    vol.layers()
                        .checkpoint(&format!("l{l}"), "")
                        .await
                        .expect("checkpoint");
                }
                (vol, dir, attr.ino)
            });
            g.bench_function(
                BenchmarkId::new(format!("lookup_stat/{name}"), layers),
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let a = vol.lookup(&me, dir, b"f907").await.expect("lookup");
                        vol.getattr(&me, a.ino).await.expect("getattr");
                    });
                },
            );
            g.bench_function(
                BenchmarkId::new(format!("open_read_4k/{name}"), layers),
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let fh = vol.open(&me, file, libc::O_RDONLY).await.expect("open");
                        vol.read(&me, fh, 512 << 10, 4096).await.expect("read");
                        vol.release(&me, fh).await.expect("release");
                    });
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, checkpoint, layer_depth);
criterion_main!(benches);
