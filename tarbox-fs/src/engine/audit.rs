//! How a volume audits its operations: event construction, the path of an inode, strict-mode
//! records inside the operation's transaction, per-handle counters and operation metrics.
//!
//! Every public operation of [`Volume`] (see `api.rs`) runs through [`Volume::audited`], which
//! first asks the tenant's access policy (`access.rs`) whether the operation may run at all, then
//! decides from the volume's level whether the operation is recorded, measures it, and queues the
//! event. Paths come from a cache of `(parent, name)` per inode, filled by every lookup, create,
//! link, rename and `readdirplus` while auditing is on, so building a path costs no store round
//! trip; an inode the cache does not know (a handle opened before auditing was on, or an evicted
//! entry) is located through its parent hint in the store.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::access::{child_path_of, default_need};
use super::{Volume, lock};
use crate::audit::{AuditEvent, AuditLevel, AuditOp, HandleCounters, OpClass, is_denial};
use crate::backend::{LayerRecord, StoreTxn};
use crate::error::FsResult;
use crate::policy::Need;
use crate::types::{Caller, DirEntry, FileAttr, FileHandle, Ino, Timestamp};

/// Deepest path the engine reconstructs; deeper paths are shown from an inode number (and so
/// match no access-policy rule). Deeper than any path a program can name in one string
/// (`PATH_MAX` is 4096 bytes).
const MAX_DEPTH: usize = 4096;
/// Directory entries scanned to locate an inode missing from the name cache.
const MAX_SCAN: usize = 65_536;
/// Names remembered per volume; past this the cache starts over (names are found again in the
/// store on demand).
const NAME_CACHE_ENTRIES: usize = 1 << 20;

tokio::task_local! {
    /// The event a strict-mode change writes in its own transaction.
    static STRICT: StrictSlot;
}

struct StrictSlot {
    event: RefCell<AuditEvent>,
    started: Instant,
    recorded: Cell<bool>,
}

/// What an operation acts on, for its event.
pub(super) enum Subject<'a> {
    Ino(Ino),
    Child(Ino, &'a [u8]),
    /// A rename: from `(parent, name)` to `(newparent, newname)`.
    Move(Ino, &'a [u8], Ino, &'a [u8]),
    /// A new hard link of an inode at `(newparent, newname)`.
    Link(Ino, Ino, &'a [u8]),
    /// A symlink `(parent, name)` pointing to a target.
    Symlink(Ino, &'a [u8], &'a [u8]),
    /// An open handle, and the offset of the access.
    Handle(FileHandle, Option<u64>),
    /// A layer operation on the named layer.
    Layer(&'a str),
}

/// Where an inode was last seen: its directory and its name there.
type NameEntry = (Ino, Arc<[u8]>);

/// A volume's audit state.
pub(super) struct VolumeAudit {
    level: AtomicU8,
    /// Set by the mount: the tenant's stored level is then ignored.
    pinned_level: Option<AuditLevel>,
    pub(super) mount: Arc<str>,
    /// ino -> (parent, name). A plain map under a mutex: an insert on every create and lookup
    /// must cost tens of nanoseconds, not a concurrent cache's microsecond.
    names: Mutex<HashMap<Ino, NameEntry>>,
}

impl VolumeAudit {
    pub(super) fn new(
        level: AuditLevel,
        pinned_level: Option<AuditLevel>,
        mount: Arc<str>,
    ) -> Self {
        VolumeAudit {
            level: AtomicU8::new(pinned_level.unwrap_or(level) as u8),
            pinned_level,
            mount,
            names: Mutex::new(HashMap::new()),
        }
    }

    fn name_of(&self, ino: Ino) -> Option<NameEntry> {
        lock(&self.names).get(&ino).cloned()
    }

    /// Remember `ino` as `name` in `parent`; a lookup of a known name copies nothing.
    fn remember(&self, ino: Ino, parent: Ino, name: &[u8]) {
        let mut names = lock(&self.names);
        if names
            .get(&ino)
            .is_some_and(|(p, n)| *p == parent && **n == *name)
        {
            return;
        }
        if names.len() >= NAME_CACHE_ENTRIES {
            names.clear();
        }
        names.insert(ino, (parent, Arc::from(name)));
    }
}

/// Read and write counters of one open handle, reported in its `close` event.
#[derive(Debug, Default)]
pub(super) struct HandleStats {
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    path: OnceLock<Arc<str>>,
    /// Who opened the handle: its `close` is theirs (the kernel sends a release without a pid).
    opener: OnceLock<Opener>,
}

#[derive(Debug)]
struct Opener {
    uid: u32,
    gid: u32,
    pid: u32,
    process: Option<Arc<str>>,
    pod: Option<Arc<crate::types::PodIdentity>>,
}

impl HandleStats {
    fn counters(&self) -> HandleCounters {
        HandleCounters {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}

/// What an operation's result adds to its event.
pub(super) trait Outcome {
    fn note(&self, _event: &mut AuditEvent) {}
}

impl Outcome for () {}
impl Outcome for FileHandle {}
impl Outcome for Vec<Vec<u8>> {}
impl Outcome for Vec<DirEntry> {}
impl Outcome for Vec<(DirEntry, FileAttr)> {}
impl Outcome for LayerRecord {}

impl Outcome for FileAttr {
    fn note(&self, event: &mut AuditEvent) {
        event.ino = Some(self.ino);
    }
}

impl Outcome for (FileAttr, FileHandle) {
    fn note(&self, event: &mut AuditEvent) {
        event.ino = Some(self.0.ino);
    }
}

impl Outcome for Bytes {
    fn note(&self, event: &mut AuditEvent) {
        event.bytes = self.len() as u64;
    }
}

impl Outcome for Vec<u8> {
    fn note(&self, event: &mut AuditEvent) {
        event.bytes = self.len() as u64;
    }
}

impl Outcome for Ino {
    fn note(&self, event: &mut AuditEvent) {
        event.ino = Some(*self);
    }
}

impl Outcome for super::namespace::Renamed {
    fn note(&self, event: &mut AuditEvent) {
        event.ino = Some(self.moved);
    }
}

impl Outcome for u32 {
    fn note(&self, event: &mut AuditEvent) {
        event.bytes = u64::from(*self);
    }
}

/// Each operation's count and latency metrics, registered once per engine with the recorder
/// installed then (an exporter is installed before the engine is opened), so the data path does
/// not build label sets.
pub(super) struct OpMetrics {
    by_op: Vec<(metrics::Counter, metrics::Histogram)>,
}

impl OpMetrics {
    pub(super) fn register() -> OpMetrics {
        OpMetrics {
            by_op: AuditOp::ALL
                .iter()
                .map(|op| {
                    let name = op.as_str();
                    (
                        metrics::counter!("tarbox_operations_total", "op" => name),
                        metrics::histogram!("tarbox_operation_duration_seconds", "op" => name),
                    )
                })
                .collect(),
        }
    }
}

/// Record an operation's count, latency and errors as metrics (whatever the audit level).
fn record_metrics(m: &OpMetrics, op: AuditOp, errno: i32, elapsed: Duration) {
    let name = op.as_str();
    if let Some((count, latency)) = m.by_op.get(op as usize) {
        count.increment(1);
        latency.record(elapsed.as_secs_f64());
    }
    if errno != 0 {
        metrics::counter!("tarbox_operation_errors_total", "op" => name, "errno" => crate::audit::errno_name(errno))
            .increment(1);
    }
}

impl Volume {
    /// The level this volume records at.
    pub fn audit_level(&self) -> AuditLevel {
        AuditLevel::from_code(i16::from(self.inner.audit.level.load(Ordering::Relaxed)))
            .unwrap_or_default()
    }

    /// Follow a level change of the tenant (unless the mount fixed the level).
    pub(super) fn follow_audit_level(&self, stored: Option<AuditLevel>) {
        let audit = &self.inner.audit;
        if audit.pinned_level.is_none() {
            let level = stored.unwrap_or(self.shared().config.audit.default_level);
            audit.level.store(level as u8, Ordering::Relaxed);
        }
    }

    /// Run `op` as the audited operation `kind` on `subject`: measure it, count it, and queue its
    /// event if the level records it (or if it was denied).
    pub(super) async fn audited<T: Outcome>(
        &self,
        caller: &Caller,
        kind: AuditOp,
        subject: Subject<'_>,
        op: impl Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        self.audited_with(caller, kind, subject, None, None, None, op)
            .await
    }

    /// [`Volume::audited`] with the event's detail text and byte count (a new size, a length).
    pub(super) async fn audited_with_detail<T: Outcome>(
        &self,
        caller: &Caller,
        kind: AuditOp,
        subject: Subject<'_>,
        detail: &str,
        bytes: Option<u64>,
        op: impl Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        self.audited_with(caller, kind, subject, Some(detail), bytes, None, op)
            .await
    }

    /// [`Volume::audited`] for an operation whose need under the access policy depends on its
    /// arguments (an open for writing, `access(W_OK)`).
    pub(super) async fn audited_needing<T: Outcome>(
        &self,
        caller: &Caller,
        kind: AuditOp,
        need: Need,
        subject: Subject<'_>,
        op: impl Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        self.audited_with(caller, kind, subject, None, None, Some(need), op)
            .await
    }

    /// Run `op` unless the access policy refuses it, audit and measure it.
    #[allow(clippy::too_many_arguments)]
    async fn audited_with<T: Outcome>(
        &self,
        caller: &Caller,
        kind: AuditOp,
        subject: Subject<'_>,
        detail: Option<&str>,
        bytes: Option<u64>,
        need: Option<Need>,
        op: impl Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        let level = self.audit_level();
        let started = Instant::now();
        let time = self.now();
        let wanted = level.records(kind.class());
        let refusal = match need.or_else(|| default_need(kind)) {
            Some(need) => self.admit(caller, kind, &subject, need).await.err(),
            None => None,
        };
        let (refused_with, refused) = match refusal {
            Some(r) => (Some(r.error), Some(r.detail)),
            None => (None, None),
        };
        let refused = refused.as_deref();
        let describe = |mut e: AuditEvent| {
            if let Some(d) = refused.or(detail).filter(|d| !d.is_empty()) {
                e.detail = Some(d.into());
            }
            if let Some(b) = bytes {
                e.bytes = b;
            }
            e
        };
        let template = if wanted {
            Some(describe(self.new_event(caller, kind, &subject, time).await))
        } else {
            None
        };
        let strict = self.shared().config.audit.strict && kind.class() == OpClass::Change;
        let (result, in_store) = match (refused_with, &template, strict) {
            (Some(error), _, _) => (Err(error), false),
            (None, Some(event), true) => {
                let slot = StrictSlot {
                    event: RefCell::new(event.clone()),
                    started,
                    recorded: Cell::new(false),
                };
                STRICT
                    .scope(slot, async {
                        let r = op.await;
                        (r, STRICT.with(|s| s.recorded.get()))
                    })
                    .await
            }
            _ => (op.await, false),
        };
        let elapsed = started.elapsed();
        let errno = result.as_ref().err().map_or(0, |e| e.errno());
        record_metrics(&self.shared().op_metrics, kind, errno, elapsed);
        let event = match template {
            Some(e) => Some(e),
            None if level != AuditLevel::Off && is_denial(errno) => {
                Some(describe(self.new_event(caller, kind, &subject, time).await))
            }
            None => None,
        };
        if let Some(mut e) = event {
            e.duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            e.errno = errno;
            if let Ok(v) = &result {
                v.note(&mut e);
            }
            e.in_store = in_store;
            self.shared().auditor.record(e).await;
        }
        result
    }

    /// Commit `txn`, first writing the strict-mode record of the running change into it (once
    /// per operation: with its first committed transaction).
    pub(super) async fn commit(&self, mut txn: Box<dyn StoreTxn>) -> FsResult<()> {
        let pending = STRICT
            .try_with(|s| {
                (!s.recorded.get()).then(|| {
                    let mut e = s.event.borrow().clone();
                    e.duration_us = u64::try_from(s.started.elapsed().as_micros()).unwrap_or(0);
                    e
                })
            })
            .ok()
            .flatten();
        let committed = match pending {
            None => txn.commit().await,
            Some(event) => {
                txn.record_audit(&event).await?;
                let committed = txn.commit().await;
                if committed.is_ok() {
                    let _ = STRICT.try_with(|s| s.recorded.set(true));
                }
                committed
            }
        };
        self.inner.commits.fetch_add(1, Ordering::Release);
        Ok(committed?)
    }

    /// Tell the strict-mode record which inode the change made or removed.
    pub(super) fn note_inode(ino: Ino) {
        let _ = STRICT.try_with(|s| s.event.borrow_mut().ino = Some(ino));
    }

    async fn new_event(
        &self,
        caller: &Caller,
        op: AuditOp,
        subject: &Subject<'_>,
        time: Timestamp,
    ) -> AuditEvent {
        let shared = self.shared();
        let mut e = AuditEvent {
            seq: 0,
            time,
            tenant: self.inner.tenant_name.clone(),
            tenant_id: self.inner.tenant.id,
            layer: self.view().head(),
            op,
            path: None,
            path2: None,
            ino: None,
            offset: None,
            bytes: 0,
            duration_us: 0,
            errno: 0,
            uid: caller.uid,
            gid: caller.gid,
            pid: caller.pid,
            process: shared.process_name(caller.pid),
            node: shared.node.clone(),
            mount: self.inner.audit.mount.clone(),
            pod: caller.pod.clone(),
            handle: None,
            detail: None,
            in_store: false,
        };
        match *subject {
            Subject::Ino(ino) => {
                e.ino = Some(ino);
                e.path = Some(self.path_of(ino).await);
            }
            Subject::Child(parent, name) => {
                e.path = Some(self.child_path(parent, name).await);
            }
            Subject::Move(p, n, np, nn) => {
                e.path = Some(self.child_path(p, n).await);
                e.path2 = Some(self.child_path(np, nn).await);
            }
            Subject::Link(ino, np, nn) => {
                e.ino = Some(ino);
                e.path = Some(self.path_of(ino).await);
                e.path2 = Some(self.child_path(np, nn).await);
            }
            Subject::Symlink(p, n, target) => {
                e.path = Some(self.child_path(p, n).await);
                e.path2 = Some(crate::audit::path_display(target).into());
            }
            Subject::Handle(fh, offset) => {
                e.offset = offset;
                e.path = self.handle_path(fh).await;
                if let Ok((ino, stats)) = self.handle_audit(fh) {
                    e.ino = Some(ino);
                    if op == AuditOp::Close {
                        e.handle = Some(stats.counters());
                        if let Some(o) = stats.opener.get() {
                            (e.uid, e.gid, e.pid) = (o.uid, o.gid, o.pid);
                            e.process.clone_from(&o.process);
                            e.pod.clone_from(&o.pod);
                        }
                    }
                }
            }
            Subject::Layer(name) => {
                e.detail = Some(name.into());
            }
        }
        e
    }

    /// The path of the file `fh` was opened on, as first seen through that handle.
    pub(super) async fn handle_path(&self, fh: FileHandle) -> Option<Arc<str>> {
        let (ino, stats) = self.handle_audit(fh).ok()?;
        Some(match stats.path.get() {
            Some(p) => p.clone(),
            None => {
                let p = self.path_of(ino).await;
                stats.path.get_or_init(|| p).clone()
            }
        })
    }

    /// Remember that `ino` is called `name` in `parent` (while auditing is on, or an access
    /// policy needs paths).
    pub(super) fn learn_name(&self, ino: Ino, parent: Ino, name: &[u8]) {
        if ino != Ino::ROOT
            && (self.audit_level() != AuditLevel::Off || self.inner.access.is_active())
        {
            self.inner.audit.remember(ino, parent, name);
        }
    }

    /// A removed entry no longer names its inode: forget it if it was the inode's cached name
    /// (the next event of the inode finds a remaining name in the store).
    pub(super) fn forget_name(&self, ino: Ino, parent: Ino, name: &[u8]) {
        let mut names = lock(&self.inner.audit.names);
        if names
            .get(&ino)
            .is_some_and(|(p, n)| *p == parent && &**n == name)
        {
            names.remove(&ino);
        }
    }

    /// The path of `parent`'s entry `name`.
    pub(super) async fn child_path(&self, parent: Ino, name: &[u8]) -> Arc<str> {
        child_path_of(&self.path_of(parent).await, name).into()
    }

    /// The path of `ino` from the tenant's root (its most recently learned name).
    pub(super) async fn path_of(&self, ino: Ino) -> Arc<str> {
        let mut parts: Vec<Arc<[u8]>> = Vec::new();
        let mut cur = ino;
        let mut unknown = None;
        while cur != Ino::ROOT {
            if parts.len() >= MAX_DEPTH {
                unknown = Some(cur);
                break;
            }
            let found = match self.inner.audit.name_of(cur) {
                Some(found) => Some(found),
                None => match self.native().and_then(|n| n.name_of(cur)) {
                    Some(native) => Some(native),
                    None => self.locate(cur).await,
                },
            };
            match found {
                Some((parent, name)) => {
                    parts.push(name);
                    cur = parent;
                }
                None => {
                    unknown = Some(cur);
                    break;
                }
            }
        }
        let mut path = String::new();
        if let Some(ino) = unknown {
            // Not reachable from the root any more (unlinked) or not found: name it by number.
            path.push_str(&format!("#{ino}"));
        }
        for name in parts.iter().rev() {
            path.push('/');
            path.push_str(&crate::audit::path_display(name));
        }
        if path.is_empty() {
            path.push('/');
        }
        path.into()
    }

    /// Find an inode's name in the store through its parent hint, and remember it.
    async fn locate(&self, ino: Ino) -> Option<NameEntry> {
        let mut r = self.reader();
        let parent = r.inode(ino).await.ok()??.parent;
        let mut after = 0;
        let mut scanned = 0;
        // Under an access policy a path decides what is allowed: find it however long it takes.
        let max_scan = if self.inner.access.is_active() {
            usize::MAX
        } else {
            MAX_SCAN
        };
        while scanned < max_scan {
            let page = r.list_dir(parent, after, 1024).await.ok()?;
            let Some(last) = page.last() else { break };
            after = last.cookie;
            scanned += page.len();
            if let Some(entry) = page.into_iter().find(|e| e.ino == ino) {
                self.inner.audit.remember(ino, parent, &entry.name);
                return Some((parent, Arc::from(entry.name)));
            }
        }
        None
    }

    /// Count a read or write through `fh` for its `close` event and the byte metrics.
    pub(super) fn count_io(&self, fh: FileHandle, write: bool, bytes: u64) {
        let Ok((_, stats)) = self.handle_audit(fh) else {
            return;
        };
        if write {
            stats.writes.fetch_add(1, Ordering::Relaxed);
            stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
            metrics::counter!("tarbox_written_bytes_total").increment(bytes);
        } else {
            stats.reads.fetch_add(1, Ordering::Relaxed);
            stats.bytes_read.fetch_add(bytes, Ordering::Relaxed);
            metrics::counter!("tarbox_read_bytes_total").increment(bytes);
        }
    }

    /// Remember who opened `fh`, for its `close` record.
    pub(super) fn note_opener(&self, fh: FileHandle, caller: &Caller) {
        if self.audit_level() < AuditLevel::Standard {
            return;
        }
        if let Ok((_, stats)) = self.handle_audit(fh) {
            let _ = stats.opener.set(Opener {
                uid: caller.uid,
                gid: caller.gid,
                pid: caller.pid,
                process: self.shared().process_name(caller.pid),
                pod: caller.pod.clone(),
            });
        }
    }

    /// Publish the tenant's usage and quota as gauges.
    pub(super) async fn publish_usage(&self) {
        let Ok((usage, quota)) = self.usage().await else {
            return;
        };
        let tenant = self.inner.tenant.name.clone();
        metrics::gauge!("tarbox_quota_used_bytes", "tenant" => tenant.clone())
            .set(usage.bytes as f64);
        metrics::gauge!("tarbox_quota_used_inodes", "tenant" => tenant.clone())
            .set(usage.inodes as f64);
        if let Some(limit) = quota.bytes {
            metrics::gauge!("tarbox_quota_limit_bytes", "tenant" => tenant.clone())
                .set(limit as f64);
        }
        if let Some(limit) = quota.inodes {
            metrics::gauge!("tarbox_quota_limit_inodes", "tenant" => tenant).set(limit as f64);
        }
    }
}
