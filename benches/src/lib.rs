//! Shared setup of the engine benchmarks: which backends to measure and fresh tenants on them.

use std::sync::atomic::{AtomicU64, Ordering};

use tarbox_fs::{Engine, EngineConfig, TenantOptions, Volume};

/// The backends to measure: always memory; PostgreSQL at `TARBOX_BENCH_DATABASE_URL` (default
/// the local test database) when it answers.
pub async fn backends() -> Vec<(&'static str, Engine)> {
    let mut out = Vec::new();
    if let Ok(e) = Engine::open("memory://", EngineConfig::default()).await {
        out.push(("memory", e));
    }
    let url = std::env::var("TARBOX_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tarbox_test".into());
    match Engine::open(&url, EngineConfig::default()).await {
        Ok(e) => out.push(("postgres", e)),
        Err(e) => eprintln!("benches: PostgreSQL at {url} not measured: {e}"),
    }
    out
}

/// A new tenant with a unique name and the given block size.
#[allow(clippy::disallowed_methods)] // unique tenant names across runs
pub async fn fresh_volume(engine: &Engine, block_size: u32) -> Volume {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "bench-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let options = TenantOptions {
        block_size,
        ..TenantOptions::default()
    };
    engine
        .create_tenant(&name, options)
        .await
        .unwrap_or_else(|e| panic!("cannot create bench tenant {name}: {e}"));
    engine
        .volume(&name)
        .await
        .unwrap_or_else(|e| panic!("cannot open bench tenant {name}: {e}"))
}

/// The runtime every benchmark runs on: two workers, as many as this machine has cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
