//! The engine: every POSIX rule, once.
//!
//! An [`Engine`] owns a backend and administers tenants; a [`Volume`] is one tenant's tree as seen
//! through one layer view, and carries every file operation. Frontends call `Volume` methods with a
//! [`Caller`] and map the returned [`FsError`] to their protocol with [`FsError::errno`].
//!
//! Operations are split by family: `namespace` (lookup, create, remove, link, rename), `attr`
//! (getattr, setattr, access, statfs), `io` (open files, read, write, flush, truncate), `dir`
//! (readdir), `xattr`, with the shared checks in `names` and `perm`, block encoding in `blocks`
//! and tenant administration in `tenants`.
//!
//! Every mutation runs in one backend transaction that locks the inodes it changes, re-reads what
//! it decided on, and commits; a conflict with another engine on the same store (or a layer switch)
//! makes the whole operation start over, so callers never see a half-applied change.

mod access;
mod api;
mod attr;
mod audit;
mod audit_trail;
mod blocks;
mod buffer;
mod cached;
mod data;
mod diff;
mod dir;
mod disk_cache;
mod fetch;
mod fsck;
mod io;
mod layers;
mod meta_cache;
mod names;
mod namespace;
mod native;
mod patched;
mod patience;
mod perm;
mod ranges;
mod readahead;
mod tenants;
mod writeback;
mod xattr;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tracing::{debug, warn};

pub(crate) use names::CONTROL_DIR;
pub(crate) use perm::allowed as perm_allows;

pub use data::{DataCheck, DataWritten, GarbageReport};
pub use diff::{Change, ChangeKind, ContentDiff, LayerDiff, TEXT_DIFF_LIMIT};
pub use disk_cache::DiskCacheConfig;
pub use fsck::{FsckProblem, FsckReport};
pub use layers::{LayerRef, LayerSummary, LayerTree, Layers, validate_layer_name};
pub use tenants::{CloneOptions, TenantInfo, TenantOptions, validate_tenant_name};

use crate::audit::{AuditConfig, AuditLevel, AuditSink, Auditor, StoreSink};
use crate::backend::{self, Backend, LayerView, StoreRead, StoreTxn, TenantRecord};
use crate::error::{BackendError, FsError, FsResult};
use crate::types::{
    Clock, FileHandle, Ino, Inode, LayerId, Quota, SystemClock, TenantId, Timestamp, Usage,
};

use audit::{HandleStats, VolumeAudit};
use blocks::BlockCache;
use io::OpenFile;

/// Engine tuning. The defaults suit a FUSE mount on a local PostgreSQL.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Bytes of decoded blocks kept in memory, shared by every volume of the engine.
    pub block_cache_bytes: u64,
    /// Decoded blocks kept on local disk as well, behind the memory cache; `None` for none.
    pub disk_cache: Option<DiskCacheConfig>,
    /// Dirty bytes buffered per open file before a write flushes them to the backend.
    pub write_buffer_bytes: u64,
    /// File data all open files of the engine may hold before it is committed (buffered,
    /// being stored, stored awaiting the commit). A write that finds the engine over it commits
    /// its own file first, so a program writing to many files at once stays within it.
    pub held_limit_bytes: u64,
    /// How often the engine proves to the store that its session is alive.
    pub heartbeat_interval: Duration,
    /// A session silent for this long is dead; its orphans are reclaimed.
    pub session_timeout: Duration,
    /// How often a volume checks whether another engine moved the tenant's head layer (a
    /// switch elsewhere shows in reads after at most this long).
    pub head_poll_interval: Duration,
    /// Source of timestamps.
    pub clock: Arc<dyn Clock>,
    /// Audit levels, sinks and delivery.
    pub audit: AuditConfig,
    /// How long an operation waits for an unavailable store (a database restart) before it
    /// fails with `EIO`; only where retrying is safe (reads, and starting a transaction).
    pub outage_wait: Duration,
    /// How long a block of a block store stays dead (unreferenced, its object kept) before the
    /// reaper deletes its object: a reader that looked up the block's mapping just before it
    /// was overwritten can still read it meanwhile.
    pub dead_block_grace: Duration,
    /// Keys of S3 block stores; `None` takes them from the environment (`AWS_ACCESS_KEY_ID`…).
    pub s3_credentials: Option<crate::store::S3Credentials>,
    /// Inodes, and names, kept in memory per tenant (see `engine/meta_cache.rs`); 0 turns the
    /// metadata cache off.
    pub meta_cache_entries: u64,
    /// How long a cached inode or name is kept at most. Other engines' changes are heard
    /// within milliseconds; this bounds what an engine that died between a commit and its
    /// announcement can leave stale.
    pub meta_cache_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_cache_bytes: 256 << 20,
            disk_cache: None,
            write_buffer_bytes: 16 << 20,
            held_limit_bytes: 1 << 30,
            heartbeat_interval: Duration::from_secs(10),
            session_timeout: Duration::from_secs(60),
            head_poll_interval: Duration::from_millis(500),
            clock: Arc::new(SystemClock),
            audit: AuditConfig::default(),
            outage_wait: Duration::from_secs(15),
            dead_block_grace: Duration::from_secs(60),
            s3_credentials: None,
            meta_cache_entries: 100_000,
            meta_cache_ttl: Duration::from_secs(30),
        }
    }
}

/// A process name and when it was read.
type ProcessName = (std::time::Instant, Option<Arc<str>>);

/// State shared by an engine and all its volumes.
struct Shared {
    backend: Arc<dyn Backend>,
    config: EngineConfig,
    cache: BlockCache,
    disk_cache: Option<Arc<disk_cache::DiskCache>>,
    /// Blocks being loaded from where they live, so concurrent readers load each once.
    in_flight: fetch::InFlight,
    session: u64,
    auditor: Auditor,
    node: Arc<str>,
    /// pid -> (when read, process name): a pid names the same process for a while.
    processes: Mutex<HashMap<u32, ProcessName>>,
    op_metrics: audit::OpMetrics,
    /// Numbers the volumes of this engine, for their default mount names.
    volumes_opened: AtomicU64,
    /// What flushes wrote where blocks live.
    written: data::WrittenCounters,
    /// File data held by open files and not yet committed, engine-wide (see `held_limit_bytes`).
    held: Arc<AtomicU64>,
    /// Block stores opened, by URL.
    stores: Mutex<HashMap<String, Arc<dyn crate::store::BlockStore>>>,
    /// S3 keys given for particular block stores, by URL.
    store_keys: Mutex<HashMap<String, crate::store::S3Credentials>>,
    /// Inodes and names, per tenant.
    meta: meta_cache::MetaCaches,
}

impl Shared {
    pub(crate) fn now(&self) -> Timestamp {
        self.config.clock.now()
    }

    /// The name (`comm`) of process `pid`, if it can be read.
    fn process_name(&self, pid: u32) -> Option<Arc<str>> {
        if pid == 0 {
            return None;
        }
        const FRESH: Duration = Duration::from_secs(10);
        const ENTRIES: usize = 4096;
        if let Some((at, name)) = lock(&self.processes).get(&pid) {
            if at.elapsed() < FRESH {
                return name.clone();
            }
        }
        let name: Option<Arc<str>> = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|s| Arc::from(s.trim_end()));
        let mut processes = lock(&self.processes);
        if processes.len() >= ENTRIES {
            processes.retain(|_, (at, _)| at.elapsed() < FRESH);
        }
        processes.insert(pid, (std::time::Instant::now(), name.clone()));
        name
    }
}

/// The entry point: a backend plus tenant administration. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.shared.backend.kind())
            .field("session", &self.shared.session)
            .finish()
    }
}

impl Engine {
    /// Open the store named by `url` (`memory://` or `postgres://…`) and register a session.
    pub async fn open(url: &str, config: EngineConfig) -> FsResult<Engine> {
        let backend = backend::open(url).await?;
        Engine::with_backend(backend, config).await
    }

    /// An engine over an existing backend (several engines may share one, as several machines
    /// share one database).
    pub async fn with_backend(backend: Arc<dyn Backend>, config: EngineConfig) -> FsResult<Engine> {
        let now = config.clock.now();
        let session = backend
            .open_session(&format!("tarbox-fs pid {}", std::process::id()), now)
            .await?;
        let cache = BlockCache::new(config.block_cache_bytes);
        let disk_cache = match config.disk_cache.clone() {
            None => None,
            Some(disk) => Some(Arc::new(
                tokio::task::spawn_blocking(move || disk_cache::DiskCache::open(&disk))
                    .await
                    .map_err(|e| BackendError::Other(e.into()))??,
            )),
        };
        let mut sinks: Vec<Arc<dyn AuditSink>> = Vec::new();
        if config.audit.store {
            sinks.push(Arc::new(StoreSink::new(backend.clone())));
        }
        sinks.extend(config.audit.sinks.iter().cloned());
        let auditor = Auditor::start(&config.audit, sinks);
        let node = Arc::from(config.audit.node.as_str());
        let meta = meta_cache::MetaCaches::new(config.meta_cache_entries, config.meta_cache_ttl);
        let shared = Arc::new(Shared {
            backend,
            config,
            cache,
            disk_cache,
            in_flight: fetch::InFlight::default(),
            session,
            auditor,
            node,
            processes: Mutex::new(HashMap::new()),
            op_metrics: audit::OpMetrics::register(),
            volumes_opened: AtomicU64::new(0),
            written: data::WrittenCounters::default(),
            held: Arc::default(),
            stores: Mutex::new(HashMap::new()),
            store_keys: Mutex::new(HashMap::new()),
            meta,
        });
        spawn_heartbeat(Arc::downgrade(&shared));
        Ok(Engine { shared })
    }

    /// The backend, for tools that need storage-level access (migrations, fsck).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.shared.backend
    }

    /// Open the tenant's tree for file operations, writing to its head layer.
    pub async fn volume(&self, tenant: &str) -> FsResult<Volume> {
        self.volume_with(tenant, VolumeOptions::default()).await
    }

    /// Open the tenant's tree with options (read-only, or a read-only view of a checkpoint).
    pub async fn volume_with(&self, tenant: &str, options: VolumeOptions) -> FsResult<Volume> {
        let record = self.active_tenant(tenant).await?;
        let read_only = options.read_only || options.layer.is_some();
        let view = match &options.layer {
            None => build_view(self.shared.backend.as_ref(), record.id, record.head_layer).await?,
            Some(layer) => {
                let tree = LayerTree {
                    head: record.head_layer,
                    layers: self.shared.backend.layers(record.id).await?,
                };
                let layer = tree.resolve(layer)?;
                build_view(self.shared.backend.as_ref(), record.id, layer.id).await?
            }
        };
        let n = self.shared.volumes_opened.fetch_add(1, Ordering::Relaxed);
        let mount = options
            .mount
            .clone()
            .unwrap_or_else(|| format!("{}/{}", std::process::id(), n));
        let level = record
            .audit
            .level
            .unwrap_or(self.shared.config.audit.default_level);
        let audit = VolumeAudit::new(level, options.audit_level, mount.into());
        let data = self.shared.data_path(record.data_url.as_deref()).await?;
        let epoch = match data {
            data::DataPath::Store(_) if !read_only => {
                self.shared.backend.reap_epoch(record.id).await?
            }
            _ => 0,
        };
        let access = Arc::new(access::VolumeAccess::default());
        access.follow(record.access_policy.as_deref(), &record.name);
        // Time-travel views read the store: what they show never changes, and is rarely read.
        let meta = match options.layer {
            Some(_) => None,
            None => {
                let meta = self
                    .shared
                    .meta
                    .tenant(
                        &self.shared.backend,
                        record.id,
                        view.head(),
                        self.shared.session,
                    )
                    .await;
                meta.follow(view.head());
                Some(meta)
            }
        };
        let native = match (&options.native_mounts, &options.layer) {
            (Some(extra), None) => {
                let definitions = self.native_mounts_for(&record, extra).await?;
                (!definitions.is_empty())
                    .then(|| {
                        native::NativeMounts::open(&definitions, &record.name, record.id, read_only)
                    })
                    .transpose()?
            }
            _ => None,
        };
        let volume = Volume::from_parts(
            self.shared.clone(),
            record,
            view,
            (options.layer.is_some(), read_only),
            (audit, access),
            (data, epoch),
            (meta, n, native),
        );
        if !read_only {
            volume.reclaim_orphans().await?;
        }
        volume.attach_native_mounts().await?;
        // A time-travel view follows no head, but the tenant's policy and audit level still.
        volume.spawn_head_watch(self.shared.config.head_poll_interval);
        Ok(volume)
    }

    /// End the engine's session: its orphans become reclaimable at once, and every queued audit
    /// event is written (or, for a sink that is unavailable, spilled to the audit spill
    /// directory for the next engine; dropped and counted without one).
    pub async fn close(&self) -> FsResult<()> {
        self.shared.auditor.close().await;
        self.shared.backend.flush_announcements().await;
        self.shared
            .backend
            .close_session(self.shared.session)
            .await?;
        Ok(())
    }
}

fn spawn_heartbeat(shared: std::sync::Weak<Shared>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        loop {
            let interval = match shared.upgrade() {
                Some(s) => s.config.heartbeat_interval,
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(s) = shared.upgrade() else { return };
            if let Err(e) = s.backend.heartbeat(s.session, s.now()).await {
                warn!(error = %e, "session heartbeat failed");
            }
        }
    });
}

/// The chain of layers from `head` down to the base.
async fn build_view(backend: &dyn Backend, tenant: TenantId, head: LayerId) -> FsResult<LayerView> {
    let layers = backend.layers(tenant).await?;
    let by_id: HashMap<LayerId, Option<LayerId>> =
        layers.iter().map(|l| (l.id, l.parent)).collect();
    let mut chain = vec![head];
    let mut cur = head;
    while let Some(parent) = by_id.get(&cur).copied().flatten() {
        chain.push(parent);
        cur = parent;
    }
    if !by_id.contains_key(&head) {
        return Err(
            BackendError::Corrupt(format!("tenant {} has no layer {head}", tenant.0)).into(),
        );
    }
    Ok(LayerView {
        tenant,
        chain: chain.into(),
    })
}

/// How a volume is opened.
#[derive(Debug, Clone, Default)]
pub struct VolumeOptions {
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// Show the tree as it was at this layer (time travel); implies read-only.
    pub layer: Option<LayerRef>,
    /// Audit at this level whatever the tenant's setting says.
    pub audit_level: Option<AuditLevel>,
    /// This mount's name in audit events (default: `pid/n`).
    pub mount: Option<String>,
    /// Put the tenant's native mounts (its own and the shared ones) in force, and these besides
    /// (a mount's own, e.g. `tarbox mount --native`); `None` shows none (administrative tools,
    /// which have no business in a machine's host directories). Ignored for time travel.
    pub native_mounts: Option<Vec<crate::native::NativeMount>>,
}

/// One tenant's tree. Cheap to clone; all clones share open handles.
#[derive(Clone)]
pub struct Volume {
    inner: Arc<VolumeInner>,
}

impl fmt::Debug for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Volume")
            .field("tenant", &self.inner.tenant.name)
            .field("read_only", &self.inner.read_only)
            .finish()
    }
}

struct VolumeInner {
    shared: Arc<Shared>,
    tenant: TenantRecord,
    tenant_name: Arc<str>,
    audit: VolumeAudit,
    view: RwLock<LayerView>,
    /// A time-travel view never follows the tenant's head.
    pinned: bool,
    read_only: bool,
    /// Inode numbers reserved from the store and not yet used.
    inos: Mutex<std::ops::Range<u64>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    /// Files with at least one open handle, shared by all handles of the same inode so every
    /// handle sees the others' buffered writes.
    open_files: Mutex<HashMap<Ino, Arc<OpenFile>>>,
    /// Transactions this volume committed: a directory listing buffered before the latest one
    /// is read again, so the volume's own changes show in listings in progress.
    commits: AtomicU64,
    /// Whether the tenant has a byte quota, and when that was read (see `has_byte_quota`).
    byte_quota: Mutex<Option<(std::time::Instant, bool)>>,
    /// Where block contents go.
    data: data::DataPath,
    /// The tenant's reap epoch as last seen (see `data.rs`).
    reap_epoch: AtomicU64,
    /// The access policy in force, shared with the volume's checkpoint views.
    access: Arc<access::VolumeAccess>,
    /// Inodes and names of the tenant, shared with the engine's other volumes of it (serving
    /// nothing when caching is off, but announcing this volume's commits); `None` for
    /// time-travel views.
    meta: Option<Arc<meta_cache::TenantMeta>>,
    /// The volume's number in its engine (tells its own changes from others' for its kernel).
    id: u64,
    /// Host directories shown in the tree (see `native/`); `None` for none.
    native: Option<native::NativeMounts>,
}

/// What a handle refers to.
#[derive(Clone)]
enum Handle {
    File {
        file: Arc<OpenFile>,
        read: bool,
        write: bool,
        append: bool,
        stats: Arc<HandleStats>,
    },
    Dir {
        ino: Ino,
        /// Entries fetched ahead of what the frontend consumed (see `dir.rs`).
        listing: Arc<Mutex<dir::Listing>>,
    },
    /// A file or directory of a native mount, open on the host.
    Native {
        ino: Ino,
        open: Arc<native::NativeOpen>,
        stats: Arc<HandleStats>,
    },
}

/// The head watch publishes the tenant's usage metrics every this many checks.
const USAGE_METRICS_TICKS: u64 = 10;
/// The head watch of a writable volume reaps dead store blocks every this many checks.
const REAP_TICKS: u64 = 10;
/// How many inode numbers a volume reserves from the store at once.
const INO_BATCH: u64 = 256;
/// How often an operation is retried after conflicts before giving up with `EIO`.
const MAX_ATTEMPTS: u32 = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Volume {
    /// The tenant this volume belongs to.
    pub fn tenant_name(&self) -> &str {
        &self.inner.tenant.name
    }

    /// Whether this is a time-travel view of a checkpoint (which never follows the head).
    pub fn is_pinned(&self) -> bool {
        self.inner.pinned
    }

    /// The tenant's usage and quota, read fresh.
    pub async fn usage(&self) -> FsResult<(Usage, Quota)> {
        let tenant = self.inner.tenant.id;
        let usage = self.backend().usage(tenant).await?;
        let record = self
            .backend()
            .tenant_by_id(tenant)
            .await?
            .ok_or(BackendError::TenantGone)?;
        Ok((usage, record.quota))
    }

    /// A read-only view of `layer` of the same tenant, sharing this volume's engine and caches.
    pub(crate) async fn pinned(&self, layer: LayerId) -> FsResult<Volume> {
        let view = build_view(self.backend(), self.inner.tenant.id, layer).await?;
        let audit = VolumeAudit::new(
            self.audit_level(),
            Some(self.audit_level()),
            format!("{}@{layer}", self.inner.audit.mount).into(),
        );
        Ok(Volume::from_parts(
            self.inner.shared.clone(),
            self.inner.tenant.clone(),
            view,
            (true, true),
            (audit, self.inner.access.clone()),
            (self.inner.data.clone(), self.data_epoch()),
            (None, self.inner.id, None),
        ))
    }

    /// `(pinned, read_only)`, its audit and policy state, where blocks go with the reap
    /// epoch last seen, its metadata cache with the volume's number in the engine and its native
    /// mounts.
    fn from_parts(
        shared: Arc<Shared>,
        tenant: TenantRecord,
        view: LayerView,
        (pinned, read_only): (bool, bool),
        (audit, access): (VolumeAudit, Arc<access::VolumeAccess>),
        (data, reap_epoch): (data::DataPath, u64),
        (meta, id, native): (
            Option<Arc<meta_cache::TenantMeta>>,
            u64,
            Option<native::NativeMounts>,
        ),
    ) -> Volume {
        Volume {
            inner: Arc::new(VolumeInner {
                shared,
                tenant_name: Arc::from(tenant.name.as_str()),
                tenant,
                audit,
                view: RwLock::new(view),
                pinned,
                read_only,
                inos: Mutex::new(0..0),
                handles: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
                open_files: Mutex::new(HashMap::new()),
                commits: AtomicU64::new(0),
                byte_quota: Mutex::new(None),
                data,
                reap_epoch: AtomicU64::new(reap_epoch),
                access,
                meta,
                id,
                native,
            }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn backend(&self) -> &dyn Backend {
        self.inner.shared.backend.as_ref()
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.inner.shared.now()
    }

    fn view(&self) -> LayerView {
        self.inner
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A reader of committed data through the volume's view, waiting out store outages;
    /// inodes and names come from the metadata cache when it has them.
    fn reader(&self) -> Box<dyn StoreRead> {
        self.reader_with(false)
    }

    /// A reader that asks the store for inodes and names (refreshing the cache with them).
    fn fresh_reader(&self) -> Box<dyn StoreRead> {
        self.reader_with(true)
    }

    fn reader_with(&self, fresh: bool) -> Box<dyn StoreRead> {
        let view = self.view();
        let patient = Box::new(patience::PatientReader {
            inner: self.backend().reader(&view),
            wait: self.shared().config.outage_wait,
        });
        match &self.inner.meta {
            Some(meta) => Box::new(cached::CachedReader {
                inner: patient,
                meta: meta.clone(),
                head: view.head(),
                fresh,
            }),
            None => patient,
        }
    }

    fn block_size(&self) -> u64 {
        u64::from(self.inner.tenant.block_size)
    }

    fn ensure_writable(&self) -> FsResult<()> {
        if self.inner.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Begin a transaction holding locks on `locks` (deduplicated and sorted here).
    async fn begin(&self, locks: &[Ino]) -> FsResult<Box<dyn StoreTxn>> {
        let mut locks = locks.to_vec();
        locks.sort_unstable();
        locks.dedup();
        // Nothing is applied until the transaction has begun: waiting out an outage is safe.
        let wait = self.shared().config.outage_wait;
        let view = self.view();
        let txn = patience::patiently!(wait, self.backend().begin(&view, &locks))?;
        Ok(match &self.inner.meta {
            Some(meta) => Box::new(cached::TrackedTxn::new(
                txn,
                meta.clone(),
                self.shared().backend.clone(),
                (self.inner.tenant.id, view.head(), self.inner.id),
            )),
            None => txn,
        })
    }

    /// Run `op` until it succeeds or fails for a reason other than a conflict. Each attempt is a
    /// whole operation (lookups, checks, one transaction), so a retry decides afresh.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> FsResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = FsResult<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    if matches!(e, FsError::Backend(BackendError::StaleView)) {
                        self.refresh_view().await?;
                    }
                    debug!(attempt, "retrying after conflict");
                    // Spread out engines that keep colliding on the same rows.
                    let jitter =
                        u64::from(attempt.min(10)) * (100 + u64::from(std::process::id() % 100));
                    tokio::time::sleep(Duration::from_micros(jitter)).await;
                }
                other => return other,
            }
        }
    }

    /// Re-read the tenant's head layer after another engine moved it.
    ///
    /// After a checkpoint the new head sits on the old one and shows the same tree. Anything else
    /// (a switch, here or by another engine) shows another tree: open files forget what they
    /// cached of the old one.
    async fn refresh_view(&self) -> FsResult<()> {
        let tenant = self.inner.tenant.id;
        let record = self
            .backend()
            .tenant_by_id(tenant)
            .await?
            .ok_or(BackendError::TenantGone)?;
        self.follow_audit_level(record.audit.level);
        self.inner
            .access
            .follow(record.access_policy.as_deref(), &record.name);
        if self.inner.pinned {
            return Ok(());
        }
        let old = self.view();
        if record.head_layer == old.head() {
            return Ok(());
        }
        let view = build_view(self.backend(), tenant, record.head_layer).await?;
        let same_tree = view.chain.get(1) == Some(&old.head());
        let head = view.head();
        *self.inner.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        if let Some(meta) = &self.inner.meta {
            meta.follow(head);
        }
        if !same_tree {
            self.reload_open_files().await?;
        }
        Ok(())
    }

    /// Follow the tenant's head as other engines move it, checking every `interval`, for as long
    /// as the volume lives: reads then show another engine's switch within that time.
    fn spawn_head_watch(&self, interval: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let meta = self.inner.meta.clone().map(|m| Arc::downgrade(&m));
        runtime.spawn(async move {
            for tick in 0u64.. {
                // Another engine's switch is heard at once when the tenant is cached.
                match meta.as_ref().and_then(std::sync::Weak::upgrade) {
                    Some(meta) => {
                        tokio::select! {
                            () = tokio::time::sleep(interval) => {}
                            () = meta.tree_moved.notified() => {}
                        }
                    }
                    None => tokio::time::sleep(interval).await,
                }
                let Some(inner) = weak.upgrade() else { return };
                let volume = Volume { inner };
                if let Err(e) = volume.refresh_view().await {
                    debug!(error = %e, "following the tenant's head layer failed");
                }
                if tick % USAGE_METRICS_TICKS == 0 {
                    volume.publish_usage().await;
                }
                if tick % REAP_TICKS == REAP_TICKS - 1 && !volume.inner.read_only {
                    match volume.reap_dead_blocks().await {
                        Ok(0) => {}
                        Ok(n) => debug!(blocks = n, "reaped dead blocks"),
                        Err(e) => warn!(error = %e, "reaping dead blocks failed"),
                    }
                }
            }
        });
    }

    /// A fresh inode number.
    async fn alloc_ino(&self) -> FsResult<Ino> {
        {
            let mut range = lock(&self.inner.inos);
            if let Some(n) = range.next() {
                return Ok(Ino(n));
            }
        }
        let first = self
            .backend()
            .alloc_inodes(self.inner.tenant.id, INO_BATCH)
            .await?;
        let mut range = lock(&self.inner.inos);
        *range = first + 1..first + INO_BATCH;
        Ok(Ino(first))
    }

    fn new_handle(&self, handle: Handle) -> FileHandle {
        let id = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.handles).insert(id, handle);
        FileHandle(id)
    }

    fn handle(&self, fh: FileHandle) -> FsResult<Handle> {
        lock(&self.inner.handles)
            .get(&fh.0)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn take_handle(&self, fh: FileHandle) -> FsResult<Handle> {
        lock(&self.inner.handles)
            .remove(&fh.0)
            .ok_or(FsError::BadHandle)
    }

    /// The inode, from inside a transaction; `ENOENT` if absent.
    async fn inode_in(txn: &mut dyn StoreRead, ino: Ino) -> FsResult<Inode> {
        txn.inode(ino).await?.ok_or(FsError::NotFound)
    }

    /// Reclaim inodes left open-but-unlinked by sessions that died.
    async fn reclaim_orphans(&self) -> FsResult<()> {
        let timeout =
            i64::try_from(self.shared().config.session_timeout.as_nanos()).unwrap_or(i64::MAX);
        let stale_before = Timestamp(self.now().0.saturating_sub(timeout));
        let orphans = self
            .backend()
            .dead_orphans(self.inner.tenant.id, stale_before)
            .await?;
        for orphan in orphans {
            debug!(ino = %orphan.ino, "reclaiming orphan of a dead session");
            self.retrying(|| self.destroy_inode(orphan.ino)).await?;
        }
        Ok(())
    }

    /// Delete an inode whose last name and last handle are gone, returning its quota.
    async fn destroy_inode(&self, ino: Ino) -> FsResult<()> {
        let mut txn = self.begin(&[ino]).await?;
        if let Some(inode) = txn.inode(ino).await? {
            if inode.nlink == 0 {
                txn.remove_inode(ino).await?;
                let bytes = inode.charged_bytes();
                // Refunds never fail.
                let _ = txn.charge(-(bytes as i64), -1).await?;
            }
        }
        txn.remove_orphan(ino).await?;
        self.commit(txn).await?;
        Ok(())
    }
}

/// Bytes an inode counts against the byte quota: its size rounded up to 4 KiB, as `du` would
/// roughly show for a dense file. Symlink targets count as their length.
fn align4k(n: u64) -> u64 {
    n.div_ceil(4096).saturating_mul(4096)
}
