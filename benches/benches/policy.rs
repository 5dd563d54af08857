//! What an access policy costs, with the 50-rule policy of `benches/policies/fifty-rules.toml`:
//! - `policy/compile`: parsing it, and compiling the rules that concern one pod (once per pod);
//! - `policy/decide`: one decision on a path of the fsbench work directory (the last access rule
//!   grants it, so 19 other rules of the pod are tried first);
//! - `policy/lookup+getattr/<memory>/<none|fifty-rules>`: a lookup and a getattr by a pod
//!   caller on the memory backend, without a policy and under the 50 rules: the whole per-operation
//!   cost (identity mapping, the path, the decision) against the engine's own work.
//!
//! `cargo bench -p tarbox-benches --bench policy`.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tarbox_benches::{fresh_volume, runtime};
use tarbox_fs::Filesystem as _;
use tarbox_fs::policy::{AccessPolicy, Need, Workload};
use tarbox_fs::{Caller, Engine, EngineConfig, Ino, PodIdentity};

const FIFTY_RULES: &str = include_str!("../policies/fifty-rules.toml");
const BENCH_POD: Workload<'static> = Workload {
    namespace: "ml",
    service_account: "trainer",
    pod: "bench-0",
};

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    g.bench_function("compile", |b| {
        b.iter(|| {
            let policy = AccessPolicy::parse(FIFTY_RULES).expect("valid policy");
            policy.for_caller(Some(&BENCH_POD))
        });
    });
    let policy = AccessPolicy::parse(FIFTY_RULES).expect("valid policy");
    let compiled = policy.for_caller(Some(&BENCH_POD));
    let path = "/fsbench.4242/meta/f-000042";
    assert!(compiled.decide(path, Need::Write).allowed);
    g.bench_function("decide", |b| {
        b.iter(|| compiled.decide(std::hint::black_box(path), Need::Write));
    });
    g.finish();
}

fn operations(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("policy/lookup+getattr");
    let engine = rt
        .block_on(Engine::open("memory://", EngineConfig::default()))
        .expect("engine");
    let pod = Arc::new(PodIdentity {
        namespace: BENCH_POD.namespace.into(),
        name: BENCH_POD.pod.into(),
        service_account: BENCH_POD.service_account.into(),
    });
    let caller = Caller {
        pod: Some(pod),
        ..Caller::root()
    };
    for (label, policy) in [("none", None), ("fifty-rules", Some(FIFTY_RULES))] {
        let volume = rt.block_on(async {
            let v = fresh_volume(&engine, 256 << 10).await;
            engine
                .set_access_policy(v.tenant_name(), policy, &Caller::root())
                .await
                .expect("set policy");
            let v = engine.volume(v.tenant_name()).await.expect("volume");
            let root = Caller::root();
            let dir = v
                .mkdir(&root, Ino::ROOT, b"fsbench.4242", 0o777)
                .await
                .expect("mkdir");
            let dir = v
                .mkdir(&root, dir.ino, b"meta", 0o777)
                .await
                .expect("mkdir");
            v.mknod(&root, dir.ino, b"f-000042", libc::S_IFREG | 0o644, 0)
                .await
                .expect("mknod");
            (v, dir.ino)
        });
        let (volume, dir) = volume;
        g.bench_function(BenchmarkId::new("memory", label), |b| {
            b.to_async(&rt).iter(|| async {
                let attr = volume
                    .lookup(&caller, dir, b"f-000042")
                    .await
                    .expect("lookup");
                volume.getattr(&caller, attr.ino).await.expect("getattr")
            });
        });
    }
    g.finish();
}

criterion_group!(benches, decide, operations);
criterion_main!(benches);
