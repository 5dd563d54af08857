//! Model-based test of the namespace and file data: random operation sequences are applied both to
//! a [`Volume`] and to a small in-memory model of a POSIX tree, and every result (values and
//! errnos) must agree. After each sequence the whole tree is walked through `readdir` and compared
//! with the model (names, kinds, inode numbers, link counts, sizes, contents, xattrs, usage).
//!
//! The name space is tiny (`a`..`d`, at most two levels) so that operations collide often. The
//! tenant uses 4 KiB blocks so writes cross blocks and leave sparse gaps cheaply. Most operations
//! run as root; some run as an unprivileged caller (uid 1000) to exercise permission and sticky
//! rules, whose expected errnos follow Linux (checked against a real kernel). Two handle slots
//! keep files open across operations, so buffered writes, `ftruncate` and unlinked-but-open
//! files are covered too. Every sequence starts with a fixed prelude (directories `a`, `b`, files
//! `c`, `a/d`) and runs on an engine with the default write buffer or one that flushes every two
//! blocks (`small_buffer`).
//!
//! Layers are part of the sequences: checkpoints (the model keeps a copy of the tree per
//! checkpoint), switches to any layer made so far (rollback to a checkpoint, or roll-forward to a
//! head an earlier switch left, whose tree the model kept too), and drops of any of them, with or
//! without force, of dropped ones and of the current layer (the errnos are modelled). Handles
//! stay open across layer changes and see the new tree's version of their file (see `history`
//! for the two rules that keep this simple). At the end, besides the live tree, every layer the
//! model kept is checked: its place in the layer tree, the usage it recorded, and its whole tree
//! through a time-travel view.
//!
//! Files: `ops` (operations, generators, results), `posix` (the model of the tree), `posix_apply`
//! (operations applied to the model), `history` (the model of the layers), `sut` (the engine
//! side), `check` (whole-tree checks).
//!
//! The same code runs on the memory backend (`memory::model_sequences`, 64 cases by default) and on
//! PostgreSQL (`postgres::model_sequences`, 16 cases); `PROPTEST_CASES` overrides both. A failure
//! shrinks to a short, readable operation list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use tarbox_fs::backend::memory::MemoryBackend;
use tarbox_fs::{Backend, Engine, EngineConfig, Ino, TenantOptions, Volume, VolumeOptions};
use tarbox_tests::unique_tenant_name;

mod check;
mod history;
mod ops;
mod posix;
mod posix_apply;
mod sut;

use check::{check_layers, check_tree, check_usage};
use ops::*;
use posix::*;
use sut::*;

// ---------------------------------------------------------------------------------------------
// Running a sequence
// ---------------------------------------------------------------------------------------------

/// How often each operation ended with each result, to see that the generator reaches the
/// interesting cases (printed with `--nocapture`).
static STATS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn record(op: &Op, result: &MRes) {
    let name = format!("{op:?}");
    let name = name
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string();
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{e:?}"),
    };
    *STATS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(format!("{name} -> {outcome}"))
        .or_default() += 1;
}

fn print_stats() {
    let stats = STATS.lock().unwrap_or_else(|p| p.into_inner());
    let lines: Vec<String> = stats.iter().map(|(k, v)| format!("  {k}: {v}")).collect();
    println!("operation outcomes:\n{}", lines.join("\n"));
}

fn show_ops(ops: &[Op], upto: usize) -> String {
    ops.iter()
        .take(upto + 1)
        .enumerate()
        .map(|(i, op)| format!("  {i:>2}: {op:?}\n"))
        .collect()
}

fn compare(step: usize, ops: &[Op], got: &ERes<Out>, want: &MRes) -> Result<(), String> {
    let same = match (got, want) {
        (Ok(g), Ok(w)) => g == w,
        (Err(g), Err(w)) => g.errno == *w,
        _ => false,
    };
    if same {
        return Ok(());
    }
    let mut detail = String::new();
    if let (Ok(Out::Data(g)), Ok(Out::Data(w))) = (got, want) {
        detail = format!("\n  {}", first_diff(&g.0, &w.0));
    }
    Err(format!(
        "step {step}: {:?}\n  engine: {got:?}\n  model:  {want:?}{detail}\nsequence:\n{}",
        ops[step],
        show_ops(ops, step)
    ))
}

/// Two engines on one store: one with the default configuration, one whose write buffer holds
/// only two blocks, so that writes also flush in the middle of a sequence.
struct Engines {
    default: Engine,
    small_buffer: Engine,
    /// Where the tenants' file data lives (`None`: in the backend).
    data_url: Option<String>,
}

impl Engines {
    async fn open(url: Option<&str>) -> Engines {
        let small = EngineConfig {
            write_buffer_bytes: 2 * BLOCK,
            ..EngineConfig::default()
        };
        let (default, small_buffer) = match url {
            None => {
                let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
                (
                    Engine::with_backend(backend.clone(), EngineConfig::default()).await,
                    Engine::with_backend(backend, small).await,
                )
            }
            Some(url) => (
                Engine::open(url, EngineConfig::default()).await,
                Engine::open(url, small).await,
            ),
        };
        Engines {
            default: default.expect("open engine"),
            small_buffer: small_buffer.expect("open engine"),
            data_url: None,
        }
    }

    async fn close(self) {
        self.default.close().await.expect("close engine");
        self.small_buffer.close().await.expect("close engine");
    }
}

/// Run one sequence on a fresh tenant; the tenant is deleted when the sequence passes.
async fn run_sequence(engines: &Engines, small_buffer: bool, ops: &[Op]) -> Result<(), String> {
    let engine = if small_buffer {
        &engines.small_buffer
    } else {
        &engines.default
    };
    let options = TenantOptions {
        block_size: BLOCK as u32,
        root_mode: 0o1777,
        data_url: engines.data_url.clone(),
        ..TenantOptions::default()
    };
    let tenant = unique_tenant_name();
    engine
        .create_tenant(&tenant, options)
        .await
        .map_err(|e| format!("create tenant: {e}"))?;
    let vol = engine
        .volume(&tenant)
        .await
        .map_err(|e| format!("open volume: {e}"))?;
    check_sequence(engine, &tenant, vol, ops).await?;
    engine
        .delete_tenant(&tenant)
        .await
        .map_err(|e| format!("delete tenant: {e}"))?;
    if engines.data_url.is_some() {
        engine
            .purge_tenant(&tenant)
            .await
            .map_err(|e| format!("purge tenant: {e}"))?;
    }
    Ok(())
}

async fn check_sequence(
    engine: &Engine,
    tenant: &str,
    vol: Volume,
    ops: &[Op],
) -> Result<(), String> {
    let mut sut = Sut {
        vol: vol.clone(),
        slots: [None; SLOTS],
        left: None,
    };
    let mut model = Model::new(0o1777, Ino::ROOT);
    let mut seen_inos: BTreeSet<Ino> = BTreeSet::from([Ino::ROOT]);
    for (step, op) in ops.iter().enumerate() {
        let applied = model.apply(op);
        let Some(want) = applied.expect else { continue };
        let (got, created) = sut.apply(op, applied.layer.as_ref()).await;
        compare(step, ops, &got, &want)?;
        record(op, &want);
        if let Some(kept) = sut.left.take() {
            model
                .left_layer(kept)
                .map_err(|e| format!("step {step}: {e}\n{}", show_ops(ops, step)))?;
        }
        if let Some(id) = applied.created {
            let ino = created.ok_or_else(|| {
                format!(
                    "step {step}: the engine created no inode\n{}",
                    show_ops(ops, step)
                )
            })?;
            if !seen_inos.insert(ino) {
                return Err(format!(
                    "step {step}: inode number {ino} reused\n{}",
                    show_ops(ops, step)
                ));
            }
            model.ino.insert(id, ino);
        }
    }
    let all = show_ops(ops, ops.len());
    // Close every handle: orphans are reclaimed, buffers flushed.
    for slot in 0..SLOTS {
        model.close_slot(slot);
        sut.close_slot(slot)
            .await
            .map_err(|e| format!("final release of slot {slot}: {e:?}\nsequence:\n{all}"))?;
    }
    check_tree(&vol, &model)
        .await
        .map_err(|e| format!("final tree check: {e}\nsequence:\n{all}"))?;
    check_usage(engine, tenant, &model)
        .await
        .map_err(|e| format!("final usage check: {e}\nsequence:\n{all}"))?;
    // A fresh engine on the same store, with empty caches, reads what the store holds rather
    // than what this engine remembers (blocks reclaimed too early by a drop show here).
    let fresh = Engine::with_backend(engine.backend().clone(), EngineConfig::default())
        .await
        .map_err(|e| format!("open a fresh engine: {e}"))?;
    let checked = async {
        let options = VolumeOptions {
            read_only: true,
            ..VolumeOptions::default()
        };
        let reader = fresh
            .volume_with(tenant, options)
            .await
            .map_err(|e| format!("open a volume on a fresh engine: {e}"))?;
        check_tree(&reader, &model)
            .await
            .map_err(|e| format!("tree check on a fresh engine: {e}"))?;
        check_layers(&fresh, tenant, &vol, &model)
            .await
            .map_err(|e| format!("layer check: {e}"))
    }
    .await;
    fresh.close().await.map_err(|e| format!("close: {e}"))?;
    checked.map_err(|e| format!("final {e}\nsequence:\n{all}"))
}

// ---------------------------------------------------------------------------------------------
// Test entry points
// ---------------------------------------------------------------------------------------------

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run_model(url: Option<&str>, cases: u32) {
    run_model_on(url, None, cases);
}

fn run_model_on(url: Option<&str>, data_url: Option<String>, cases: u32) {
    let rt = runtime();
    let mut engines = rt.block_on(Engines::open(url));
    engines.data_url = data_url;
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    proptest!(config, |(small_buffer in any::<bool>(), ops in sequence())| {
        if let Err(msg) = rt.block_on(run_sequence(&engines, small_buffer, &ops)) {
            return Err(TestCaseError::fail(msg));
        }
    });
    print_stats();
    rt.block_on(engines.close());
}

mod memory {
    #[test]
    fn model_sequences() {
        super::run_model(None, super::cases(64));
    }
}

mod postgres {
    #[test]
    fn model_sequences() {
        let Some(url) = super::runtime().block_on(tarbox_tests::postgres_url()) else {
            return;
        };
        super::run_model(Some(&url), super::cases(16));
    }
}

/// File data in a block store in a directory: write-behind stores blocks before the flush that
/// maps them, and reads are served from what is on its way.
mod file_store {
    #[test]
    fn model_sequences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = Some(format!("file://{}", dir.path().display()));
        let url = super::runtime().block_on(tarbox_tests::postgres_url());
        super::run_model_on(url.as_deref(), data, super::cases(16));
    }
}
