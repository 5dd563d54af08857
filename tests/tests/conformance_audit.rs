//! Audit: the events each level records (fields included), denials, queries and statistics,
//! retention and partitions under an injected clock, strict mode, and sinks that are slow, fail
//! or write JSON lines. Every test runs against every backend.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tarbox_fs::Filesystem as _;
use tarbox_fs::audit::{
    AuditCounters, AuditFilter, AuditOrder, AuditSink, JsonLinesSink, PathMatch, ResultFilter,
    SinkError, StatsKey,
};
use tarbox_fs::{
    AuditConfig, AuditEvent, AuditLevel, AuditOp, Caller, Clock, ControlFs, Engine, EngineConfig,
    FileHandle, Ino, PodIdentity, Quota, RenameFlags, SetAttr, TenantAudit, TenantOptions,
    Timestamp, Volume, VolumeOptions, XattrMode,
};
use tarbox_tests::{ManualClock, TestVolume, alice, assert_errno, backend_tests};

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Root, as a process with a pid the events must show.
fn root_pid() -> Caller {
    Caller {
        pid: 4242,
        ..Caller::root()
    }
}

/// Another engine on `t`'s store with `config`, and a volume of `t`'s tenant at `level`.
async fn audited(t: &TestVolume, config: EngineConfig, level: AuditLevel) -> (Engine, Volume) {
    let engine = Engine::with_backend(t.engine.backend().clone(), config)
        .await
        .expect("engine");
    let options = VolumeOptions {
        audit_level: Some(level),
        mount: Some("test-mount".into()),
        ..VolumeOptions::default()
    };
    let volume = engine
        .volume_with(&t.tenant, options)
        .await
        .expect("volume");
    (engine, volume)
}

async fn at_level(t: &TestVolume, level: AuditLevel) -> (Engine, Volume) {
    audited(t, EngineConfig::default(), level).await
}

/// Every stored event of `tenant`, oldest first, after the queue is drained.
async fn events(engine: &Engine, tenant: &str) -> Vec<AuditEvent> {
    engine.flush_audit().await;
    let filter = AuditFilter {
        tenant: Some(tenant.to_string()),
        ..AuditFilter::default()
    };
    engine.audit_query(&filter).await.expect("query")
}

/// (operation, path, second path, errno) of each event.
fn summary(events: &[AuditEvent]) -> Vec<(AuditOp, String, String, i32)> {
    events
        .iter()
        .map(|e| {
            (
                e.op,
                e.path.as_deref().unwrap_or("").to_string(),
                e.path2.as_deref().unwrap_or("").to_string(),
                e.errno,
            )
        })
        .collect()
}

fn row(op: AuditOp, path: &str, path2: &str, errno: i32) -> (AuditOp, String, String, i32) {
    (op, path.to_string(), path2.to_string(), errno)
}

async fn create_write_close(
    v: &Volume,
    who: &Caller,
    parent: Ino,
    name: &[u8],
    data: &[u8],
) -> Ino {
    let (attr, fh) = v
        .create(who, parent, name, 0o644, libc::O_WRONLY)
        .await
        .expect("create");
    v.write(who, fh, 0, data).await.expect("write");
    v.release(who, fh).await.expect("release");
    attr.ino
}

async fn read_all(v: &Volume, who: &Caller, ino: Ino, chunk: u32) -> usize {
    let fh = v.open(who, ino, libc::O_RDONLY).await.expect("open");
    let mut offset = 0u64;
    loop {
        let data = v.read(who, fh, offset, chunk).await.expect("read");
        if data.is_empty() {
            break;
        }
        offset += data.len() as u64;
    }
    v.release(who, fh).await.expect("release");
    offset as usize
}

/// A sink that holds every batch until released.
struct GatedSink {
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl AuditSink for GatedSink {
    fn name(&self) -> &'static str {
        "gated"
    }

    async fn write(&self, _events: &[AuditEvent]) -> Result<(), SinkError> {
        let permit = self.gate.acquire().await;
        drop(permit);
        Ok(())
    }
}

/// A sink that refuses everything.
struct FailingSink;

#[async_trait]
impl AuditSink for FailingSink {
    fn name(&self) -> &'static str {
        "failing"
    }

    async fn write(&self, events: &[AuditEvent]) -> Result<(), SinkError> {
        Err(SinkError::failed(
            "failing",
            format!("refused {} events", events.len()),
        ))
    }
}

/// A writer into shared memory, for the JSON lines sink.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run ops through a volume whose only sink is `sink`, with a tiny queue.
fn small_queue(sink: Arc<dyn AuditSink>) -> EngineConfig {
    EngineConfig {
        audit: AuditConfig {
            store: false,
            sinks: vec![sink],
            queue_capacity: 8,
            batch_size: 4,
            flush_interval: Duration::from_millis(1),
            ..AuditConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn assert_accounted(c: AuditCounters) {
    assert_eq!(
        c.recorded,
        c.delivered + c.dropped_queue_full + c.dropped_sink_error,
        "every event is delivered or counted as dropped: {c:?}"
    );
}

backend_tests! {
    async fn basic_records_every_change_with_its_fields(t: TestVolume) {
        let (engine, v) = at_level(&t, AuditLevel::Basic).await;
        let me = root_pid();
        let d = v.mkdir(&me, Ino::ROOT, b"d", 0o755).await.expect("mkdir").ino;
        let f = create_write_close(&v, &me, d, b"f", b"hello").await;
        v.rename(&me, d, b"f", d, b"g", RenameFlags::default()).await.expect("rename");
        v.link(&me, f, d, b"h").await.expect("link");
        v.symlink(&me, d, b"s", b"g").await.expect("symlink");
        let chmod = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        v.setattr(&me, f, &chmod).await.expect("chmod");
        let truncate = SetAttr { size: Some(2), ..SetAttr::default() };
        v.setattr(&me, f, &truncate).await.expect("truncate");
        v.setxattr(&me, f, b"user.k", b"v", XattrMode::Any).await.expect("setxattr");
        v.removexattr(&me, f, b"user.k").await.expect("removexattr");
        v.unlink(&me, d, b"h").await.expect("unlink");
        // The inode's remaining name is found again.
        v.setattr(&me, f, &chmod).await.expect("chmod");
        assert_errno!(v.rmdir(&me, Ino::ROOT, b"d").await, libc::ENOTEMPTY);
        // Reads are not changes.
        v.lookup(&me, d, b"g").await.expect("lookup");
        v.getattr(&me, f).await.expect("getattr");
        read_all(&v, &me, f, 4096).await;
        v.layers().acting_as(me.clone()).checkpoint("cp1", "").await.expect("checkpoint");

        let got = events(&engine, &t.tenant).await;
        assert_eq!(summary(&got), vec![
            row(AuditOp::Mkdir, "/d", "", 0),
            row(AuditOp::Create, "/d/f", "", 0),
            row(AuditOp::Rename, "/d/f", "/d/g", 0),
            row(AuditOp::Link, "/d/g", "/d/h", 0),
            row(AuditOp::Symlink, "/d/s", "g", 0),
            // A hard-linked inode is shown by its most recent name.
            row(AuditOp::Setattr, "/d/h", "", 0),
            row(AuditOp::Truncate, "/d/h", "", 0),
            row(AuditOp::Setxattr, "/d/h", "", 0),
            row(AuditOp::Removexattr, "/d/h", "", 0),
            row(AuditOp::Unlink, "/d/h", "", 0),
            row(AuditOp::Setattr, "/d/g", "", 0),
            row(AuditOp::Rmdir, "/d", "", libc::ENOTEMPTY),
            row(AuditOp::Checkpoint, "", "", 0),
        ]);
        for e in &got {
            assert_eq!(&*e.tenant, t.tenant.as_str());
            assert_eq!((e.uid, e.gid, e.pid), (0, 0, 4242), "{e}");
            assert_eq!(&*e.mount, "test-mount");
            assert!(!e.node.is_empty());
            assert!(e.seq > 0);
        }
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq && w[0].time <= w[1].time));
        assert_eq!(got[0].ino, Some(d));
        assert_eq!(got[1].ino, Some(f), "a create names the inode it made");
        assert_eq!(got[5].detail.as_deref(), Some("mode=600"));
        assert_eq!(got[6].bytes, 2, "a truncate records the new size");
        assert_eq!(got[7].detail.as_deref(), Some("user.k"));
        assert_eq!(got[7].bytes, 1);
        assert_eq!(got[9].ino, Some(f), "an unlink names the inode it unlinked");
        assert_eq!(got[12].detail.as_deref(), Some("cp1"));
        engine.close().await.expect("close");
    }

    async fn standard_adds_one_close_record_per_handle_with_counters(t: TestVolume) {
        let (engine, v) = at_level(&t, AuditLevel::Standard).await;
        let me = root_pid();
        let (attr, fh) = v.create(&me, Ino::ROOT, b"f", 0o644, libc::O_RDWR).await.expect("create");
        for i in 0..3u64 {
            v.write(&me, fh, i * 1000, &[7u8; 1000]).await.expect("write");
        }
        v.release(&me, fh).await.expect("release");
        assert_eq!(read_all(&v, &me, attr.ino, 2000).await, 3000);
        v.lookup(&me, Ino::ROOT, b"f").await.expect("lookup");

        let got = events(&engine, &t.tenant).await;
        assert_eq!(summary(&got), vec![
            row(AuditOp::Create, "/f", "", 0),
            row(AuditOp::Close, "/f", "", 0),
            row(AuditOp::Close, "/f", "", 0),
        ]);
        let writes = got[1].handle.expect("counters");
        assert_eq!((writes.reads, writes.writes, writes.bytes_read, writes.bytes_written), (0, 3, 0, 3000));
        let reads = got[2].handle.expect("counters");
        // Two reads return data, the third finds the end of the file.
        assert_eq!((reads.reads, reads.writes, reads.bytes_read, reads.bytes_written), (3, 0, 3000, 0));
        assert_eq!(got[1].ino, Some(attr.ino));
        engine.close().await.expect("close");
    }

    async fn full_records_every_access_with_offsets(t: TestVolume) {
        let (engine, v) = at_level(&t, AuditLevel::Full).await;
        let me = root_pid();
        let f = create_write_close(&v, &me, Ino::ROOT, b"f", b"0123456789abcdef").await;
        let attr = v.lookup(&me, Ino::ROOT, b"f").await.expect("lookup");
        v.getattr(&me, attr.ino).await.expect("getattr");
        let fh = v.open(&me, f, libc::O_RDONLY).await.expect("open");
        assert_eq!(&v.read(&me, fh, 10, 4).await.expect("read")[..], b"abcd");
        v.release(&me, fh).await.expect("release");

        let got = events(&engine, &t.tenant).await;
        assert_eq!(summary(&got), vec![
            row(AuditOp::Create, "/f", "", 0),
            row(AuditOp::Write, "/f", "", 0),
            row(AuditOp::Close, "/f", "", 0),
            row(AuditOp::Lookup, "/f", "", 0),
            row(AuditOp::Getattr, "/f", "", 0),
            row(AuditOp::Open, "/f", "", 0),
            row(AuditOp::Read, "/f", "", 0),
            row(AuditOp::Close, "/f", "", 0),
        ]);
        assert_eq!((got[1].offset, got[1].bytes), (Some(0), 16));
        assert_eq!((got[6].offset, got[6].bytes), (Some(10), 4));
        assert_eq!(got[3].ino, Some(f));
        engine.close().await.expect("close");
    }

    async fn denials_are_recorded_at_every_level_but_off(t: TestVolume) {
        let tenant = t.new_tenant(TenantOptions {
            quota: Quota { bytes: None, inodes: Some(3) },
            ..TenantOptions::default()
        }).await;
        let root = root_pid();
        let secret = create_write_close(&tenant.volume, &root, Ino::ROOT, b"secret", b"x").await;
        tenant.chmod("/secret", 0o600).await;
        let a = Caller { pid: 7, ..alice() };
        for level in [AuditLevel::Off, AuditLevel::Basic] {
            let (engine, v) = at_level(&tenant, level).await;
            assert_errno!(v.open(&a, secret, libc::O_RDONLY).await, libc::EACCES);
            assert_errno!(v.create(&a, Ino::ROOT, b"mine", 0o644, libc::O_WRONLY).await, libc::EACCES);
            engine.flush_audit().await;
            engine.close().await.expect("close");
        }
        // Over the inode quota (root, /secret and /two make three).
        let (engine, v) = at_level(&tenant, AuditLevel::Basic).await;
        create_write_close(&v, &root, Ino::ROOT, b"two", b"").await;
        assert_errno!(v.mkdir(&root, Ino::ROOT, b"three", 0o755).await, libc::ENOSPC);

        let denied = AuditFilter {
            tenant: Some(tenant.tenant.clone()),
            result: Some(ResultFilter::Denied),
            ..AuditFilter::default()
        };
        engine.flush_audit().await;
        let got = engine.audit_query(&denied).await.expect("query");
        assert_eq!(summary(&got), vec![
            row(AuditOp::Open, "/secret", "", libc::EACCES),
            row(AuditOp::Create, "/mine", "", libc::EACCES),
            row(AuditOp::Mkdir, "/three", "", libc::ENOSPC),
        ], "the off-level volume recorded nothing");
        assert_eq!((got[0].uid, got[0].pid), (1000, 7));
        engine.close().await.expect("close");
    }

    async fn queries_filter_by_every_field(t: TestVolume) {
        let (engine, v) = at_level(&t, AuditLevel::Standard).await;
        let pod = Arc::new(PodIdentity {
            namespace: "ml".into(),
            name: "trainer-0".into(),
            service_account: "trainer".into(),
        });
        let in_pod = Caller { pid: 11, pod: Some(pod), ..Caller::new(1000, 1000) };
        let plain = root_pid();
        let data = v.mkdir(&plain, Ino::ROOT, b"data", 0o777).await.expect("mkdir").ino;
        create_write_close(&v, &in_pod, data, b"a.csv", b"1,2").await;
        create_write_close(&v, &plain, data, b"b.txt", b"hi").await;
        create_write_close(&v, &plain, Ino::ROOT, b"database", b"").await;
        assert_errno!(v.mkdir(&in_pod, Ino::ROOT, b"nope", 0o755).await, libc::EACCES);
        engine.flush_audit().await;
        let all = events(&engine, &t.tenant).await;
        assert_eq!(all.len(), 8, "{:?}", summary(&all));

        let q = |f: AuditFilter| {
            let engine = engine.clone();
            let tenant = t.tenant.clone();
            async move {
                let f = AuditFilter { tenant: Some(tenant), ..f };
                summary(&engine.audit_query(&f).await.expect("query"))
            }
        };
        let paths = |rows: Vec<(AuditOp, String, String, i32)>| -> Vec<(AuditOp, String)> {
            rows.into_iter().map(|r| (r.0, r.1)).collect()
        };
        let s = |op: AuditOp, p: &str| (op, p.to_string());

        assert_eq!(paths(q(AuditFilter { path: Some(PathMatch::parse("/data")), ..Default::default() }).await), vec![
            s(AuditOp::Mkdir, "/data"), s(AuditOp::Create, "/data/a.csv"), s(AuditOp::Close, "/data/a.csv"),
            s(AuditOp::Create, "/data/b.txt"), s(AuditOp::Close, "/data/b.txt"),
        ], "a prefix matches whole components: /database is not under /data");
        assert_eq!(paths(q(AuditFilter { path: Some(PathMatch::parse("/data/*.csv")), ops: vec![AuditOp::Close], ..Default::default() }).await),
            vec![s(AuditOp::Close, "/data/a.csv")]);
        assert_eq!(q(AuditFilter { uid: Some(1000), ..Default::default() }).await.len(), 3);
        assert_eq!(q(AuditFilter { pid: Some(11), ..Default::default() }).await.len(), 3);
        assert_eq!(q(AuditFilter { pod: Some("ml/trainer-0".into()), ..Default::default() }).await.len(), 3);
        assert_eq!(q(AuditFilter { pod: Some("trainer-0".into()), ..Default::default() }).await.len(), 3);
        assert_eq!(q(AuditFilter { pod: Some("other".into()), ..Default::default() }).await.len(), 0);
        assert_eq!(paths(q(AuditFilter { result: Some(ResultFilter::Errno(libc::EACCES)), ..Default::default() }).await),
            vec![s(AuditOp::Mkdir, "/nope")]);
        assert_eq!(q(AuditFilter { result: Some(ResultFilter::Ok), ..Default::default() }).await.len(), 7);
        // Time window, sequence, limit and order.
        let mid = all[4].time;
        assert!(q(AuditFilter { since: Some(mid), ..Default::default() }).await.len() >= 4);
        assert!(q(AuditFilter { until: Some(mid), ..Default::default() }).await.len() <= 4);
        assert_eq!(q(AuditFilter { after_seq: Some(all[5].seq), ..Default::default() }).await, summary(&all[6..]));
        assert_eq!(q(AuditFilter { limit: 2, order: AuditOrder::NewestFirst, ..Default::default() }).await,
            vec![summary(&all[7..])[0].clone(), summary(&all[6..7])[0].clone()]);
        // Other tenants' events are never returned.
        let other = AuditFilter { tenant: Some("no-such-tenant".into()), ..AuditFilter::default() };
        assert!(engine.audit_query(&other).await.expect("query").is_empty());
        engine.close().await.expect("close");
    }

    async fn statistics_rank_files_directories_and_users(t: TestVolume) {
        let (engine, v) = at_level(&t, AuditLevel::Standard).await;
        let root = root_pid();
        let a = Caller { pid: 21, ..Caller::new(1000, 1000) };
        let logs = v.mkdir(&root, Ino::ROOT, b"logs", 0o777).await.expect("mkdir").ino;
        let hot = create_write_close(&v, &root, logs, b"hot", &[1u8; 100]).await;
        create_write_close(&v, &a, logs, b"cold", &[1u8; 10]).await;
        let top = create_write_close(&v, &root, Ino::ROOT, b"top", &[1u8; 50]).await;
        for _ in 0..3 {
            read_all(&v, &a, hot, 40).await; // 3 reads with data + 1 at the end, 100 bytes
        }
        read_all(&v, &a, top, 100).await;
        engine.flush_audit().await;
        let filter = AuditFilter { tenant: Some(t.tenant.clone()), ..AuditFilter::default() };

        let files = engine.audit_stats(&filter, StatsKey::File, 10).await.expect("stats");
        let keys: Vec<(&str, u64, u64, u64, u64, u64)> = files.iter()
            .map(|r| (r.key.as_str(), r.opens, r.reads, r.writes, r.bytes_read, r.bytes_written)).collect();
        assert_eq!(keys, vec![
            ("/logs/hot", 4, 12, 1, 300, 100),
            ("/top", 2, 2, 1, 50, 50),
            ("/logs/cold", 1, 0, 1, 0, 10),
        ]);
        let dirs = engine.audit_stats(&filter, StatsKey::Directory, 1).await.expect("stats");
        assert_eq!(dirs.len(), 1);
        assert_eq!((dirs[0].key.as_str(), dirs[0].reads, dirs[0].bytes_written), ("/logs", 12, 110));
        let users = engine.audit_stats(&filter, StatsKey::Uid, 10).await.expect("stats");
        let users: Vec<(&str, u64)> = users.iter().map(|r| (r.key.as_str(), r.reads + r.writes)).collect();
        assert_eq!(users, vec![("1000", 15), ("0", 2)]);

        let series = engine.audit_series(&filter, Duration::from_secs(3600 * 24 * 365)).await.expect("series");
        let total: u64 = series.iter().map(|p| p.bytes_read).sum();
        assert_eq!(total, 350);
        assert_eq!(series.iter().map(|p| p.changes).sum::<u64>(), 4, "mkdir and three creates");
        assert_eq!(series.iter().map(|p| p.opens).sum::<u64>(), 7);
        engine.close().await.expect("close");
    }

    async fn partitions_follow_the_clock_across_a_month_and_expire_whole(t: TestVolume) {
        // 2001-01-31T23:59:00Z: far in the past, so expiring what this clock calls old never
        // touches the partitions other tests write to.
        let clock = ManualClock::at(Timestamp(980_985_540 * 1_000_000_000));
        let config = EngineConfig {
            clock: clock.clone(),
            audit: AuditConfig { default_retention_days: 2, ..AuditConfig::default() },
            ..EngineConfig::default()
        };
        let (engine, v) = audited(&t, config, AuditLevel::Basic).await;
        engine.prepare_audit_partitions().await.expect("prepare");
        let day = |t: Timestamp| t.0.div_euclid(NS_PER_DAY);
        let jan31 = day(clock.now());
        let parts: Vec<i64> = engine.audit_partitions().await.expect("partitions")
            .iter().map(|p| day(p.start)).collect();
        for d in jan31..=jan31 + 7 {
            assert!(parts.contains(&d), "partition of day {d} is ready ahead: {parts:?}");
        }
        let me = root_pid();
        v.mkdir(&me, Ino::ROOT, b"january", 0o755).await.expect("mkdir");
        clock.advance(Duration::from_secs(120)); // 2001-02-01T00:01:00Z
        v.mkdir(&me, Ino::ROOT, b"february", 0o755).await.expect("mkdir");
        let got = events(&engine, &t.tenant).await;
        assert_eq!(summary(&got), vec![
            row(AuditOp::Mkdir, "/january", "", 0),
            row(AuditOp::Mkdir, "/february", "", 0),
        ]);
        assert_eq!(day(got[0].time), jan31);
        assert_eq!(day(got[1].time), jan31 + 1);

        // A month later by this clock, both days are past every retention: whole partitions go.
        clock.advance(Duration::from_secs(30 * 86_400));
        let report = engine.expire_audit().await.expect("expire");
        assert!(report.partitions_dropped >= 2, "{report:?}");
        assert!(events(&engine, &t.tenant).await.is_empty());
        let parts: Vec<i64> = engine.audit_partitions().await.expect("partitions")
            .iter().map(|p| day(p.start)).collect();
        assert!(!parts.contains(&jan31) && !parts.contains(&(jan31 + 1)), "{parts:?}");
        // An insert for a day whose partition is gone creates it again.
        v.mkdir(&me, Ino::ROOT, b"march", 0o755).await.expect("mkdir");
        assert_eq!(events(&engine, &t.tenant).await.len(), 1);
        engine.close().await.expect("close");
    }

    async fn a_shorter_tenant_retention_deletes_only_that_tenants_rows(t: TestVolume) {
        // 2001-03-10T12:00:00Z.
        let clock = ManualClock::at(Timestamp(984_225_600 * 1_000_000_000));
        let config = EngineConfig {
            clock: clock.clone(),
            audit: AuditConfig { default_retention_days: 30, ..AuditConfig::default() },
            ..EngineConfig::default()
        };
        let other = t.new_tenant(TenantOptions::default()).await;
        let info = t.engine.set_audit(&t.tenant, TenantAudit { level: None, retention_days: Some(1) })
            .await.expect("set retention");
        assert_eq!(info.audit_retention_days, 1);
        assert_errno!(t.engine.set_audit(&t.tenant, TenantAudit { level: None, retention_days: Some(0) }).await, libc::EINVAL);
        let (engine, short) = audited(&t, config.clone(), AuditLevel::Basic).await;
        let (engine2, long) = audited(&other, config, AuditLevel::Basic).await;
        let me = root_pid();
        short.mkdir(&me, Ino::ROOT, b"a", 0o755).await.expect("mkdir");
        long.mkdir(&me, Ino::ROOT, b"b", 0o755).await.expect("mkdir");
        engine.flush_audit().await;
        engine2.flush_audit().await;
        clock.advance(Duration::from_secs(3 * 86_400));
        let report = engine.expire_audit().await.expect("expire");
        assert!(report.events_deleted >= 1, "{report:?}");
        assert!(events(&engine, &t.tenant).await.is_empty(), "one day of retention has passed");
        assert_eq!(events(&engine, &other.tenant).await.len(), 1, "thirty days have not");
        engine.close().await.expect("close");
        engine2.close().await.expect("close");
    }

    async fn strict_mode_commits_each_change_with_its_record(t: TestVolume) {
        // No queue-fed store sink: whatever the store holds came from the changes' transactions.
        let config = EngineConfig {
            audit: AuditConfig { strict: true, store: false, ..AuditConfig::default() },
            ..EngineConfig::default()
        };
        let (engine, v) = audited(&t, config, AuditLevel::Standard).await;
        let me = root_pid();
        let d = v.mkdir(&me, Ino::ROOT, b"d", 0o755).await.expect("mkdir").ino;
        assert_errno!(v.mkdir(&me, Ino::ROOT, b"d", 0o755).await, libc::EEXIST);
        let f = create_write_close(&v, &me, d, b"f", b"data").await;
        v.rename(&me, d, b"f", Ino::ROOT, b"g", RenameFlags::default()).await.expect("rename");
        let filter = AuditFilter { tenant: Some(t.tenant.clone()), ..AuditFilter::default() };
        // Not flushed: the records are there because the changes committed.
        let got = engine.audit_query(&filter).await.expect("query");
        assert_eq!(summary(&got), vec![
            row(AuditOp::Mkdir, "/d", "", 0),
            row(AuditOp::Create, "/d/f", "", 0),
            row(AuditOp::Rename, "/d/f", "/g", 0),
        ], "a failed change commits nothing, and a close is not a change");
        assert_eq!(got[1].ino, Some(f));
        engine.close().await.expect("close");

        // With the store sink too, each change is stored once.
        let config = EngineConfig {
            audit: AuditConfig { strict: true, ..AuditConfig::default() },
            ..EngineConfig::default()
        };
        let (engine, v) = audited(&t, config, AuditLevel::Standard).await;
        v.unlink(&me, Ino::ROOT, b"g").await.expect("unlink");
        let got = events(&engine, &t.tenant).await;
        assert_eq!(got.iter().filter(|e| e.op == AuditOp::Unlink).count(), 1);
        engine.close().await.expect("close");
    }

    async fn a_stalled_sink_never_stalls_file_operations(t: TestVolume) {
        let sink = Arc::new(GatedSink { gate: tokio::sync::Semaphore::new(0) });
        let (engine, v) = audited(&t, small_queue(sink.clone()), AuditLevel::Full).await;
        let me = root_pid();
        // Far more events than the queue holds, while the sink takes nothing. A stall would
        // hang here; the timeout turns that into a failure.
        let ops = async {
            for i in 0..50u32 {
                create_write_close(&v, &me, Ino::ROOT, format!("f{i}").as_bytes(), b"x").await;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), ops).await.expect("file operations went on");
        let stalled = engine.audit_counters();
        assert_eq!(stalled.recorded, 150, "create, write and close of 50 files");
        assert!(stalled.dropped_queue_full > 0, "{stalled:?}");
        sink.gate.add_permits(1_000_000);
        engine.flush_audit().await;
        let c = engine.audit_counters();
        assert_eq!(c.dropped_sink_error, 0);
        assert_accounted(c);
        assert!(c.delivered > 0 && c.delivered <= 8 + 4, "at most a batch and a queue: {c:?}");
        engine.close().await.expect("close");
    }

    async fn a_failing_sink_loses_nothing_but_its_own_copy(t: TestVolume) {
        let config = EngineConfig {
            audit: AuditConfig { sinks: vec![Arc::new(FailingSink)], ..AuditConfig::default() },
            ..EngineConfig::default()
        };
        let (engine, v) = audited(&t, config, AuditLevel::Basic).await;
        let me = root_pid();
        for name in [&b"a"[..], b"b", b"c"] {
            v.mkdir(&me, Ino::ROOT, name, 0o755).await.expect("mkdir");
        }
        let got = events(&engine, &t.tenant).await;
        assert_eq!(got.len(), 3, "the store sink still got every event");
        let c = engine.audit_counters();
        assert_eq!((c.recorded, c.dropped_sink_error, c.dropped_queue_full), (3, 3, 0));
        assert_eq!(c.delivered, 3);
        engine.close().await.expect("close");
    }

    async fn json_lines_follow_the_documented_schema(t: TestVolume) {
        let buf = SharedBuf::default();
        let config = EngineConfig {
            audit: AuditConfig {
                sinks: vec![Arc::new(JsonLinesSink::writer(Box::new(buf.clone())))],
                ..AuditConfig::default()
            },
            ..EngineConfig::default()
        };
        let (engine, v) = audited(&t, config, AuditLevel::Standard).await;
        let me = root_pid();
        create_write_close(&v, &me, Ino::ROOT, b"f\xff", b"abc").await;
        let stored = events(&engine, &t.tenant).await;
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text.lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object")).collect();
        assert_eq!(lines.len(), 2);
        let create = &lines[0];
        for key in ["time", "tenant", "tenant_id", "layer", "op", "path", "ino", "duration_us", "errno", "uid", "gid", "pid", "node", "mount"] {
            assert!(create.get(key).is_some(), "key {key} in {create}");
        }
        assert_eq!(create["op"], "create");
        assert_eq!(create["path"], "/f\\xff", "bytes that are not UTF-8 are escaped");
        assert_eq!(create["tenant"], t.tenant.as_str());
        assert!(create["time"].as_str().is_some_and(|s| s.ends_with('Z') && s.contains('T')));
        assert_eq!(lines[1]["handle"]["bytes_written"], 3);
        // The lines carry the same events the store holds.
        let mut parsed: AuditEvent = serde_json::from_value(lines[1].clone()).expect("an AuditEvent");
        parsed.seq = stored[1].seq;
        assert_eq!(parsed, stored[1]);
        engine.close().await.expect("close");
    }

    async fn the_control_file_shows_recent_events(t: TestVolume) {
        let (engine, v) = at_level(&t, AuditLevel::Basic).await;
        let me = root_pid();
        v.mkdir(&me, Ino::ROOT, b"visible", 0o755).await.expect("mkdir");
        let control = ControlFs::with_control_dir(v.clone(), true);
        let dir = control.lookup(&me, Ino::ROOT, b".tarbox").await.expect(".tarbox");
        let audit = control.lookup(&me, dir.ino, b"audit").await.expect("audit");
        let recent = control.lookup(&me, audit.ino, b"recent").await.expect("recent");
        let fh: FileHandle = control.open(&me, recent.ino, libc::O_RDONLY).await.expect("open");
        let text = String::from_utf8(control.read(&me, fh, 0, 1 << 20).await.expect("read").to_vec()).expect("text");
        control.release(&me, fh).await.expect("release");
        assert!(text.contains("mkdir") && text.contains("/visible") && text.contains("pid=4242"), "{text}");
        // It names every user's paths: other users of the mount may not read it.
        assert_errno!(control.open(&tarbox_tests::alice(), recent.ino, libc::O_RDONLY).await, libc::EACCES);
        engine.close().await.expect("close");
    }

    async fn a_mount_follows_the_tenants_level(t: TestVolume) {
        let config = EngineConfig { head_poll_interval: Duration::from_millis(20), ..EngineConfig::default() };
        let engine = Engine::with_backend(t.engine.backend().clone(), config).await.expect("engine");
        let v = engine.volume(&t.tenant).await.expect("volume");
        assert_eq!(v.audit_level(), AuditLevel::Standard, "the default");
        t.engine.set_audit(&t.tenant, TenantAudit { level: Some(AuditLevel::Off), retention_days: None })
            .await.expect("set level");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while v.audit_level() != AuditLevel::Off {
            assert!(tokio::time::Instant::now() < deadline, "the volume never followed the new level");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        v.mkdir(&root_pid(), Ino::ROOT, b"quiet", 0o755).await.expect("mkdir");
        assert!(events(&engine, &t.tenant).await.is_empty());
        let info = t.engine.tenant_info(&t.tenant).await.expect("info");
        assert_eq!((info.audit_level, info.audit.level), (AuditLevel::Off, Some(AuditLevel::Off)));
        engine.close().await.expect("close");
    }
}
