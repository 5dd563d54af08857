//! The cost of auditing, on every available backend: the same workloads with the tenant's level
//! `off`, `standard` (the default) and `full`. Each measurement includes draining the audit
//! queue, so the database writes of the trail are paid inside the timing.
//! - `audit/metadata/<backend>/<level>`: create and close an empty file, look it up, stat it and
//!   unlink it;
//! - `audit/small_file/<backend>/<level>`: create, write 4 KiB and close a file, then open, read
//!   and close it.
//!
//! `cargo bench -p tarbox-benches --bench audit`. The aim: standard within 10% of off, full
//! within 25%.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tarbox_benches::{backends, fresh_volume, runtime};
use tarbox_fs::Filesystem as _;
use tarbox_fs::{AuditLevel, Caller, Engine, Ino, Volume, VolumeOptions};

const LEVELS: [AuditLevel; 3] = [AuditLevel::Off, AuditLevel::Standard, AuditLevel::Full];

/// A fresh tenant's volume at `level`.
async fn volume_at(engine: &Engine, level: AuditLevel) -> Volume {
    let v = fresh_volume(engine, 256 << 10).await;
    let options = VolumeOptions {
        audit_level: Some(level),
        ..VolumeOptions::default()
    };
    engine
        .volume_with(v.tenant_name(), options)
        .await
        .expect("volume at level")
}

async fn metadata_round(v: &Volume, me: &Caller, i: u64) {
    let name = format!("m{i}");
    let (attr, fh) = v
        .create(me, Ino::ROOT, name.as_bytes(), 0o644, libc::O_WRONLY)
        .await
        .expect("create");
    v.release(me, fh).await.expect("release");
    let found = v
        .lookup(me, Ino::ROOT, name.as_bytes())
        .await
        .expect("lookup");
    v.getattr(me, found.ino).await.expect("getattr");
    assert_eq!(found.ino, attr.ino);
    v.unlink(me, Ino::ROOT, name.as_bytes())
        .await
        .expect("unlink");
}

async fn small_file_round(v: &Volume, me: &Caller, i: u64, data: &[u8]) {
    let name = format!("s{i}");
    let (attr, fh) = v
        .create(me, Ino::ROOT, name.as_bytes(), 0o644, libc::O_RDWR)
        .await
        .expect("create");
    v.write(me, fh, 0, data).await.expect("write");
    v.release(me, fh).await.expect("release");
    let fh = v.open(me, attr.ino, libc::O_RDONLY).await.expect("open");
    let back = v.read(me, fh, 0, 8192).await.expect("read");
    assert_eq!(back.len(), data.len());
    v.release(me, fh).await.expect("release");
}

/// The two workloads, by their benchmark names.
#[derive(Clone, Copy)]
enum Workload {
    Metadata,
    SmallFile,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Metadata => "metadata",
            Workload::SmallFile => "small_file",
        }
    }

    async fn round(self, v: &Volume, me: &Caller, i: u64, data: &[u8]) {
        match self {
            Workload::Metadata => metadata_round(v, me, i).await,
            Workload::SmallFile => small_file_round(v, me, i, data).await,
        }
    }
}

fn audit(c: &mut Criterion) {
    let rt = runtime();
    let engines = rt.block_on(backends());
    let mut g = c.benchmark_group("audit");
    g.measurement_time(Duration::from_secs(4)).sample_size(10);
    let me = Caller {
        pid: std::process::id(),
        ..Caller::root()
    };
    let data = vec![7u8; 4096];
    for (backend, engine) in &engines {
        for level in LEVELS {
            for workload in [Workload::Metadata, Workload::SmallFile] {
                // A fresh tenant per measurement, and fresh names for every round.
                let v = rt.block_on(volume_at(engine, level));
                let mut n = 0u64;
                let id = BenchmarkId::new(format!("{}/{backend}", workload.name()), level);
                g.bench_function(id, |b| {
                    b.to_async(&rt).iter_custom(|iters| {
                        let (v, me, data) = (v.clone(), me.clone(), data.clone());
                        let first = n;
                        n += iters;
                        let engine = engine.clone();
                        async move {
                            let start = Instant::now();
                            for i in first..first + iters {
                                workload.round(&v, &me, i, &data).await;
                            }
                            engine.flush_audit().await;
                            start.elapsed()
                        }
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, audit);
criterion_main!(benches);
