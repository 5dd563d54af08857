//! Engine benchmarks on every available backend: create, lookup/stat, readdir, 4 KiB and 1 MiB
//! reads and writes, 4 KiB appends, and a block-size sweep of sequential I/O (how the default
//! was chosen). The write benchmarks also print their write amplification: bytes the engine
//! stored per byte written.
//!
//! `cargo bench -p tarbox-benches` (PostgreSQL from TARBOX_BENCH_DATABASE_URL or the local test
//! database). Compare ratios between rows of one run, not absolute numbers across days.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tarbox_benches::{backends, fresh_volume, runtime};
use tarbox_fs::Filesystem as _;
use tarbox_fs::{Caller, DataWritten, Engine, Ino, Volume};

/// `len` bytes that differ from those of every other `seed` in each 4 KiB, so that
/// content-addressed deduplication cannot make a benchmark store less than it writes, and that
/// do not compress (as tensors and already-compressed datasets), so that what is stored is what
/// was written.
fn distinct(seed: u64, len: usize) -> Vec<u8> {
    tarbox_tests::noise(len, seed)
}

const DEFAULT_BLOCK: u32 = 256 << 10;

fn metadata(c: &mut Criterion) {
    let rt = runtime();
    let engines = rt.block_on(backends());
    let me = Caller::root();
    let mut g = c.benchmark_group("metadata");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    for (name, engine) in &engines {
        let vol = rt.block_on(fresh_volume(engine, DEFAULT_BLOCK));
        let dir = rt
            .block_on(vol.mkdir(&me, Ino::ROOT, b"create", 0o755))
            .expect("mkdir")
            .ino;
        let n = AtomicU64::new(0);
        g.bench_function(BenchmarkId::new("create_close", name), |b| {
            b.to_async(&rt).iter(|| async {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let (_, fh) = vol
                    .create(
                        &me,
                        dir,
                        format!("f{i}").as_bytes(),
                        0o644,
                        libc::O_WRONLY | libc::O_EXCL,
                    )
                    .await
                    .expect("create");
                vol.release(&me, fh).await.expect("release");
            })
        });
        let stat_dir = rt.block_on(populated_dir(&vol, b"stat", 1000));
        let k = AtomicU64::new(0);
        g.bench_function(BenchmarkId::new("lookup_stat", name), |b| {
            b.to_async(&rt).iter(|| async {
                let i = k.fetch_add(1, Ordering::Relaxed) % 1000;
                vol.lookup(&me, stat_dir, format!("f{i}").as_bytes())
                    .await
                    .expect("lookup")
            })
        });
        g.throughput(Throughput::Elements(1000));
        g.bench_function(BenchmarkId::new("readdir_1000", name), |b| {
            b.to_async(&rt).iter(|| async {
                let fh = vol.opendir(&me, stat_dir).await.expect("opendir");
                let mut offset = 0;
                let mut seen = 0;
                loop {
                    let page = vol
                        .readdir(&me, stat_dir, fh, offset)
                        .await
                        .expect("readdir");
                    let Some(last) = page.last() else { break };
                    offset = last.next_offset;
                    seen += page.len();
                }
                vol.releasedir(&me, fh).await.expect("releasedir");
                assert_eq!(seen, 1002);
            })
        });
        g.throughput(Throughput::Elements(1));
    }
    g.finish();
}

async fn populated_dir(vol: &Volume, name: &[u8], n: usize) -> Ino {
    let me = Caller::root();
    let dir = vol
        .mkdir(&me, Ino::ROOT, name, 0o755)
        .await
        .expect("mkdir")
        .ino;
    for i in 0..n {
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
    dir
}

/// Writes of `size` bytes at random block-aligned offsets in a 64 MiB file, each followed by fsync
/// (what a database or a checkpoint writer does), and reads of the same size.
fn data(c: &mut Criterion) {
    let rt = runtime();
    let engines = rt.block_on(backends());
    let me = Caller::root();
    let mut g = c.benchmark_group("data");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    const FILE: u64 = 64 << 20;
    for (name, engine) in &engines {
        let vol = rt.block_on(fresh_volume(engine, DEFAULT_BLOCK));
        let (attr, fh) = rt
            .block_on(vol.create(&me, Ino::ROOT, b"data", 0o644, libc::O_RDWR))
            .expect("create");
        let _ = attr;
        rt.block_on(async {
            for off in (0..FILE).step_by(1 << 20) {
                vol.write(&me, fh, off, &distinct(off, 1 << 20))
                    .await
                    .expect("fill");
            }
            vol.fsync(&me, fh, false).await.expect("fsync");
        });
        for size in [4096usize, 1 << 20] {
            let seq = AtomicU64::new(1);
            g.throughput(Throughput::Bytes(size as u64));
            let label = if size == 4096 { "4KiB" } else { "1MiB" };
            let amplification = Amplification::start(engine);
            g.bench_function(
                BenchmarkId::new(format!("write_fsync_{label}"), name),
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let i = seq.fetch_add(7919, Ordering::Relaxed);
                        let off = (i * size as u64) % (FILE - size as u64);
                        let off = off - off % size as u64;
                        vol.write(&me, fh, off, &distinct(i, size))
                            .await
                            .expect("write");
                        amplification.wrote(size);
                        vol.fsync(&me, fh, false).await.expect("fsync");
                    })
                },
            );
            amplification.report(&format!("data/write_fsync_{label}/{name}"));
            g.bench_function(BenchmarkId::new(format!("read_{label}"), name), |b| {
                b.to_async(&rt).iter(|| async {
                    let i = seq.fetch_add(7919, Ordering::Relaxed);
                    let off = (i * size as u64) % (FILE - size as u64);
                    vol.read(&me, fh, off, size as u32).await.expect("read")
                })
            });
        }
        rt.block_on(vol.release(&me, fh)).expect("release");

        // Appends of 4 KiB, each made durable: a log, a journal, a metrics file.
        let (_, log) = rt
            .block_on(vol.create(
                &me,
                Ino::ROOT,
                b"log",
                0o644,
                libc::O_WRONLY | libc::O_APPEND,
            ))
            .expect("create");
        let n = AtomicU64::new(0);
        g.throughput(Throughput::Bytes(4096));
        let amplification = Amplification::start(engine);
        g.bench_function(BenchmarkId::new("append_fsync_4KiB", name), |b| {
            b.to_async(&rt).iter(|| async {
                let i = n.fetch_add(1, Ordering::Relaxed);
                vol.write(&me, log, 0, &distinct(i, 4096))
                    .await
                    .expect("append");
                amplification.wrote(4096);
                vol.fsync(&me, log, false).await.expect("fsync");
            })
        });
        amplification.report(&format!("data/append_fsync_4KiB/{name}"));
        rt.block_on(vol.release(&me, log)).expect("release");
    }
    g.finish();
}

/// Write amplification over a benchmark: bytes the engine stored (`Engine::data_written`) per
/// byte the benchmark wrote, printed beside criterion's timings.
struct Amplification<'a> {
    engine: &'a Engine,
    before: DataWritten,
    written: AtomicU64,
}

impl<'a> Amplification<'a> {
    fn start(engine: &'a Engine) -> Self {
        Amplification {
            engine,
            before: engine.data_written(),
            written: AtomicU64::new(0),
        }
    }

    fn wrote(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn report(&self, id: &str) {
        let stored = self.engine.data_written().bytes - self.before.bytes;
        let written = self.written.load(Ordering::Relaxed);
        if written == 0 {
            // Filtered out of this run: nothing to report.
            return;
        }
        println!(
            "{id}: write amplification {:.2} ({stored} bytes stored for {written} written)",
            stored as f64 / written as f64
        );
    }
}

/// Sequential 16 MiB write+fsync per block size: the default
/// block size is the smallest that reaches the throughput plateau on PostgreSQL.
fn block_size(c: &mut Criterion) {
    let rt = runtime();
    let engines = rt.block_on(backends());
    let me = Caller::root();
    let mut g = c.benchmark_group("block_size");
    g.measurement_time(Duration::from_secs(8)).sample_size(10);
    const TOTAL: usize = 16 << 20;
    g.throughput(Throughput::Bytes(TOTAL as u64));
    for (name, engine) in engines.iter().filter(|(n, _)| *n == "postgres") {
        for bs in [64u32 << 10, 256 << 10, 1 << 20] {
            let vol = rt.block_on(fresh_volume(engine, bs));
            let n = AtomicU64::new(0);
            let amplification = Amplification::start(engine);
            g.bench_function(
                BenchmarkId::new(format!("seq_write_{}KiB", bs >> 10), name),
                |b| {
                    b.to_async(&rt).iter(|| async {
                        let i = n.fetch_add(1, Ordering::Relaxed);
                        let (_, fh) = vol
                            .create(
                                &me,
                                Ino::ROOT,
                                format!("s{i}").as_bytes(),
                                0o644,
                                libc::O_WRONLY,
                            )
                            .await
                            .expect("create");
                        for off in (0..TOTAL).step_by(1 << 20) {
                            let payload = distinct(i << 8 | (off >> 20) as u64, 1 << 20);
                            vol.write(&me, fh, off as u64, &payload)
                                .await
                                .expect("write");
                            amplification.wrote(payload.len());
                        }
                        vol.fsync(&me, fh, false).await.expect("fsync");
                        vol.release(&me, fh).await.expect("release");
                    })
                },
            );
            amplification.report(&format!("block_size/seq_write_{}KiB/{name}", bs >> 10));
        }
    }
    g.finish();
}

criterion_group!(benches, metadata, data, block_size);
criterion_main!(benches);
