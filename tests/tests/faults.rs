//! Storage failures, injected with the fault-injecting backend wrapper on every backend: an
//! operation whose commit (or any statement) fails returns `EIO` and leaves the tree, the
//! tenant's usage and the audit trail as they were; a dropped connection fails operations with
//! `EIO` (never a wrong errno, never a hang); and the engine serves again once storage is back.
//! Audit events whose delivery meets an outage are held (spilled to disk beyond a bound, and at
//! close) and delivered in order when the store is back, by the same engine or the next one.

use std::collections::BTreeMap;

use tarbox_fs::Filesystem as _;
use tarbox_fs::audit::{AuditConfig, AuditFilter};
use tarbox_fs::backend::faulty::Faults;
use tarbox_fs::{
    AuditEvent, AuditLevel, AuditOp, Caller, EngineConfig, FileType, Ino, RenameFlags, SetAttr,
    Usage, Volume, XattrMode, paths,
};
use tarbox_tests::{TestVolume, assert_errno, backend_tests, noise};

/// Everything a user can observe of a tree: per path, its attributes (but access times), its
/// content or target, and its extended attributes.
type TreeState = BTreeMap<String, String>;

/// The tree as a fresh volume of the tenant reads it (nothing cached from the faulty engine).
async fn observe(t: &TestVolume) -> TreeState {
    let v = t.reopen().await;
    let me = Caller::root();
    let mut out = TreeState::new();
    let mut dirs = vec![(String::new(), Ino::ROOT)];
    while let Some((path, dir)) = dirs.pop() {
        for (entry, attr) in paths::list_dir(&v, &me, dir).await.expect("list") {
            let name = format!("{path}/{}", String::from_utf8_lossy(&entry.name));
            let body = match attr.kind {
                FileType::Regular => {
                    let fh = v.open(&me, attr.ino, libc::O_RDONLY).await.expect("open");
                    let data = v.read(&me, fh, 0, 1 << 20).await.expect("read");
                    v.release(&me, fh).await.expect("release");
                    format!("{:x?}", blake3::hash(&data))
                }
                FileType::Symlink => {
                    String::from_utf8_lossy(&v.readlink(&me, attr.ino).await.expect("readlink"))
                        .into_owned()
                }
                FileType::Directory => {
                    dirs.push((name.clone(), attr.ino));
                    String::new()
                }
                _ => String::new(),
            };
            let mut xattrs = Vec::new();
            for x in v.listxattr(&me, attr.ino).await.expect("listxattr") {
                let value = v.getxattr(&me, attr.ino, &x).await.expect("getxattr");
                xattrs.push((x, value));
            }
            out.insert(
                name,
                format!(
                    "{:?} {:o} {}:{} size={} nlink={} mtime={:?} ctime={:?} {body} {xattrs:?}",
                    attr.kind,
                    attr.perm,
                    attr.uid,
                    attr.gid,
                    attr.size,
                    attr.nlink,
                    attr.mtime,
                    attr.ctime
                ),
            );
        }
    }
    out
}

/// A small tree with every kind of thing an operation below touches.
async fn populate(t: &TestVolume) {
    t.mkdir_p("/dir/sub").await;
    t.write_file("/dir/a", b"alpha").await;
    t.write_file("/big", &noise(600 << 10, 7)).await;
    let me = Caller::root();
    let a = t.ino("/dir/a").await;
    t.volume
        .setxattr(&me, a, b"user.k", b"v", XattrMode::Any)
        .await
        .expect("setxattr");
    t.volume
        .symlink(&me, Ino::ROOT, b"link", b"dir/a")
        .await
        .expect("symlink");
}

/// The audit events of the faulty engine's volume after `seq`, oldest first.
async fn events_after(t: &TestVolume, seq: u64) -> Vec<AuditEvent> {
    let filter = AuditFilter {
        tenant: Some(t.tenant.clone()),
        after_seq: Some(seq),
        limit: 10_000,
        ..AuditFilter::default()
    };
    let events = t.engine.audit_query(&filter).await.expect("audit query");
    events
        .into_iter()
        .filter(|e| &*e.mount == "faulty")
        .collect()
}

/// An engine config whose audit events wait in the queue until a flush (so a test decides when
/// delivery happens), holding at most `held` events in memory.
fn held_audit(held: usize, spill_dir: Option<std::path::PathBuf>) -> EngineConfig {
    EngineConfig {
        audit: AuditConfig {
            default_level: AuditLevel::Standard,
            flush_interval: std::time::Duration::from_secs(3600),
            held_capacity: held,
            spill_dir,
            ..AuditConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// Make directories `/d0`… through `v`; returns their paths.
async fn mkdirs(v: &Volume, n: usize) -> Vec<String> {
    let root = Caller::root();
    let mut made = Vec::new();
    for i in 0..n {
        let name = format!("d{i}");
        v.mkdir(&root, Ino::ROOT, name.as_bytes(), 0o755)
            .await
            .expect("mkdir");
        made.push(format!("/{name}"));
    }
    made
}

/// The directories the audit trail says were made after `seq`, in order.
async fn mkdirs_recorded(t: &TestVolume, seq: u64) -> Vec<String> {
    events_after(t, seq)
        .await
        .into_iter()
        .filter(|e| e.op == AuditOp::Mkdir && e.errno == 0)
        .filter_map(|e| e.path.map(|p| p.to_string()))
        .collect()
}

/// One change of the tree, applied through `v`.
#[derive(Debug, Clone, Copy)]
enum Change {
    Create,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Symlink,
    Chmod,
    Truncate,
    Setxattr,
    Removexattr,
}

const CHANGES: [Change; 11] = [
    Change::Create,
    Change::Mkdir,
    Change::Unlink,
    Change::Rmdir,
    Change::Rename,
    Change::Link,
    Change::Symlink,
    Change::Chmod,
    Change::Truncate,
    Change::Setxattr,
    Change::Removexattr,
];

async fn apply(v: &Volume, t: &TestVolume, change: Change) -> tarbox_fs::FsResult<()> {
    let me = Caller::root();
    let dir = t.ino("/dir").await;
    let a = t.ino("/dir/a").await;
    match change {
        Change::Create => {
            let (_, fh) = v.create(&me, dir, b"new", 0o644, libc::O_WRONLY).await?;
            v.release(&me, fh).await
        }
        Change::Mkdir => v.mkdir(&me, dir, b"newdir", 0o755).await.map(drop),
        Change::Unlink => v.unlink(&me, dir, b"a").await,
        Change::Rmdir => v.rmdir(&me, dir, b"sub").await,
        Change::Rename => {
            v.rename(&me, dir, b"a", Ino::ROOT, b"moved", RenameFlags::default())
                .await
        }
        Change::Link => v.link(&me, a, Ino::ROOT, b"hard").await.map(drop),
        Change::Symlink => v.symlink(&me, dir, b"sym", b"a").await.map(drop),
        Change::Chmod => {
            let set = SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            };
            v.setattr(&me, a, &set).await.map(drop)
        }
        Change::Truncate => {
            let set = SetAttr {
                size: Some(10),
                ..SetAttr::default()
            };
            v.setattr(&me, t.ino("/big").await, &set).await.map(drop)
        }
        Change::Setxattr => v.setxattr(&me, a, b"user.new", b"1", XattrMode::Any).await,
        Change::Removexattr => v.removexattr(&me, a, b"user.k").await,
    }
}

/// Inject `fault` before each change in turn: the change fails with `EIO` and nothing a user can
/// observe moves, then the same change succeeds once the fault is gone.
async fn each_change_survives(t: &TestVolume, strict: bool, fault: impl Fn(&Faults)) {
    let faults = Faults::new();
    let config = EngineConfig {
        audit: AuditConfig {
            strict,
            default_level: AuditLevel::Standard,
            ..AuditConfig::default()
        },
        ..EngineConfig::default()
    };
    let (engine, v) = t.faulty(faults.clone(), config).await;
    for change in CHANGES {
        let tree = observe(t).await;
        let usage: Usage = t.usage().await;
        engine.flush_audit().await;
        t.engine.flush_audit().await;
        let seq = events_after(t, 0).await.last().map_or(0, |e| e.seq);
        let injected = faults.injected();

        fault(&faults);
        assert_errno!(apply(&v, t, change).await, libc::EIO);
        assert_eq!(
            faults.injected(),
            injected + 1,
            "{change:?}: one fault injected"
        );
        faults.reconnect();
        assert_eq!(
            observe(t).await,
            tree,
            "{change:?} failed but changed the tree"
        );
        assert_eq!(
            t.usage().await,
            usage,
            "{change:?} failed but changed the usage"
        );
        engine.flush_audit().await;
        let recorded = events_after(t, seq).await;
        assert!(
            recorded.iter().all(|e| e.errno == libc::EIO),
            "{change:?} failed but the audit trail records a success: {recorded:?}"
        );

        apply(&v, t, change)
            .await
            .unwrap_or_else(|e| panic!("{change:?} after the fault: {e}"));
        // `t` is another engine: it hears of the change within milliseconds, not at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while observe(t).await == tree {
            assert!(
                std::time::Instant::now() < deadline,
                "{change:?} succeeded but changed nothing"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        engine.flush_audit().await;
        let recorded = events_after(t, seq).await;
        assert!(
            recorded.iter().any(|e| e.errno == 0),
            "{change:?} succeeded but is not in the audit trail: {recorded:?}"
        );
        // The next change starts from a fresh tree.
        let me = Caller::root();
        for (entry, _) in paths::list_dir(&v, &me, Ino::ROOT).await.expect("list") {
            remove_all(&v, Ino::ROOT, &entry.name).await;
        }
        populate(t).await;
    }
    engine.close().await.expect("close the faulty engine");
}

/// Remove `name` in `dir` and everything under it.
async fn remove_all(v: &Volume, dir: Ino, name: &[u8]) {
    let me = Caller::root();
    let attr = v.lookup(&me, dir, name).await.expect("lookup");
    if attr.kind == FileType::Directory {
        for (entry, _) in paths::list_dir(v, &me, attr.ino).await.expect("list") {
            Box::pin(remove_all(v, attr.ino, &entry.name)).await;
        }
        v.rmdir(&me, dir, name).await.expect("rmdir");
    } else {
        v.unlink(&me, dir, name).await.expect("unlink");
    }
}

backend_tests! {
    async fn a_change_whose_commit_fails_changes_nothing(t: TestVolume) {
        populate(&t).await;
        each_change_survives(&t, false, |f| f.fail_commit(1)).await;
    }

    async fn a_strict_change_whose_commit_fails_leaves_no_record(t: TestVolume) {
        populate(&t).await;
        each_change_survives(&t, true, |f| f.fail_commit(1)).await;
    }

    async fn a_change_whose_first_write_fails_changes_nothing(t: TestVolume) {
        populate(&t).await;
        // The first statement of the operation's transaction after it began.
        each_change_survives(&t, false, |f| f.fail_txn_statement(1)).await;
    }

    async fn a_dropped_connection_fails_with_eio_and_service_resumes(t: TestVolume) {
        populate(&t).await;
        let faults = Faults::new();
        let config = EngineConfig {
            outage_wait: std::time::Duration::from_millis(200),
            ..EngineConfig::default()
        };
        let (engine, v) = t.faulty(faults.clone(), config).await;
        let me = Caller::root();
        let tree = observe(&t).await;
        faults.disconnect();
        assert_errno!(v.lookup(&me, Ino::ROOT, b"dir").await, libc::EIO);
        assert_errno!(v.getattr(&me, Ino::ROOT).await, libc::EIO);
        assert_errno!(v.mkdir(&me, Ino::ROOT, b"while-down", 0o755).await, libc::EIO);
        assert_errno!(v.opendir(&me, Ino::ROOT).await, libc::EIO);
        assert_errno!(v.statfs(&me).await, libc::EIO);
        faults.reconnect();
        assert_eq!(observe(&t).await, tree);
        let dir = v.lookup(&me, Ino::ROOT, b"dir").await.expect("lookup after reconnect");
        v.mkdir(&me, dir.ino, b"after", 0o755).await.expect("mkdir after reconnect");
        assert!(t.resolve("/dir/after").await.is_ok());
        engine.close().await.expect("close");
    }

    async fn an_outage_shorter_than_the_wait_costs_no_error(t: TestVolume) {
        populate(&t).await;
        let faults = Faults::new();
        let (engine, v) = t.faulty(faults.clone(), EngineConfig::default()).await;
        let me = Caller::root();
        faults.disconnect();
        let back = {
            let faults = faults.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                faults.reconnect();
            })
        };
        // Started while the store is down: they wait for it, then succeed.
        let dir = v.lookup(&me, Ino::ROOT, b"dir").await.expect("lookup across the outage");
        v.mkdir(&me, dir.ino, b"across", 0o755).await.expect("mkdir across the outage");
        back.await.expect("reconnect");
        assert!(t.resolve("/dir/across").await.is_ok());
        engine.close().await.expect("close");
    }

    async fn fsynced_data_survives_a_failed_fsync(t: TestVolume) {
        let faults = Faults::new();
        let (engine, v) = t.faulty(faults.clone(), EngineConfig::default()).await;
        let me = Caller::root();
        let data = noise(300 << 10, 3);
        let (attr, fh) = v
            .create(&me, Ino::ROOT, b"f", 0o644, libc::O_RDWR)
            .await
            .expect("create");
        v.write(&me, fh, 0, &data).await.expect("write");
        faults.fail_commit(1);
        assert_errno!(v.fsync(&me, fh, false).await, libc::EIO);
        // The write is still buffered: the next fsync makes it durable.
        v.fsync(&me, fh, false).await.expect("fsync after the fault");
        v.release(&me, fh).await.expect("release");
        let fresh = t.reopen().await;
        let fh = fresh.open(&me, attr.ino, libc::O_RDONLY).await.expect("open");
        let read = fresh.read(&me, fh, 0, 1 << 20).await.expect("read");
        fresh.release(&me, fh).await.expect("release");
        assert!(read[..] == data[..], "the fsynced data differs");
        engine.close().await.expect("close");
    }

    async fn audit_events_of_an_outage_are_held_and_delivered_in_order(t: TestVolume) {
        let faults = Faults::new();
        let (engine, v) = t.faulty(faults.clone(), held_audit(100_000, None)).await;
        let seq = events_after(&t, 0).await.last().map_or(0, |e| e.seq);
        let made = mkdirs(&v, 20).await;

        faults.disconnect();
        engine.flush_audit().await;
        let during = engine.audit_counters();
        assert_eq!((during.held, during.dropped_sink_error), (20, 0), "{during:?}");

        faults.reconnect();
        engine.flush_audit().await;
        let after = engine.audit_counters();
        assert_eq!((after.held, after.dropped_sink_error), (0, 0), "{after:?}");
        assert_eq!(mkdirs_recorded(&t, seq).await, made);
        engine.close().await.expect("close");
    }

    async fn audit_events_beyond_the_bound_are_spilled_and_delivered_by_the_next_engine(t: TestVolume) {
        let spill = tempfile::tempdir().expect("spill dir");
        let config = || held_audit(5, Some(spill.path().to_path_buf()));
        let faults = Faults::new();
        let (engine, v) = t.faulty(faults.clone(), config()).await;
        let seq = events_after(&t, 0).await.last().map_or(0, |e| e.seq);
        let made = mkdirs(&v, 20).await;

        faults.disconnect();
        engine.flush_audit().await;
        let during = engine.audit_counters();
        assert_eq!((during.held, during.spilled, during.dropped_sink_error), (20, 20, 0), "{during:?}");
        // The engine stops before the store is back: its session cannot even be closed.
        assert!(engine.close().await.is_err());
        drop(v);
        let spilled_files = || {
            std::fs::read_dir(spill.path())
                .expect("spill dir")
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".jsonl")))
                .count()
        };
        assert_eq!(spilled_files(), 1);

        faults.reconnect();
        let (next, _v) = t.faulty(faults.clone(), config()).await;
        next.flush_audit().await;
        assert_eq!(mkdirs_recorded(&t, seq).await, made, "delivered once, in order");
        assert_eq!(spilled_files(), 0, "the spill file is gone once delivered");
        next.close().await.expect("close");
    }
}
