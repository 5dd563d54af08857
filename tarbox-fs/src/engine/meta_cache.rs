//! The metadata cache: inodes and names of a tenant, shared by the engine's volumes of it, kept
//! coherent with every other engine on the store through the change feed
//! (`backend/changes.rs`).
//!
//! # What it holds and who fills it
//! Inodes by number, and names by `(directory, name)`: bound to an entry, or known absent
//! (negative entries, for the lookups of names that do not exist that `PATH` searches and
//! imports make). Reads outside transactions fill it ([`super::cached::CachedReader`]); a
//! transaction's writes replace what they changed when it commits
//! ([`super::cached::TrackedTxn`]), so a program's own creates are served from memory
//! right after. Reads inside transactions never use it: they decide under locks.
//!
//! # Why a stale value cannot be inserted
//! Three rules, all under one mutex with the cache itself:
//! - **A read fills only what nothing changed since it began.** Every invalidation stamps the
//!   key's stripe (one of [`STRIPES`], by hash) with a fresh epoch; a read notes the epoch
//!   before asking the store and its result is refused if the key's stripe is newer.
//! - **A write in flight blocks the key.** A transaction's first write of a key marks it
//!   pending (invalidating it); until the transaction ends, reads fill nothing there. At commit
//!   the new value goes in only if this was the key's one pending writer and no note about the
//!   key arrived meanwhile (*dirty*); the key's stripe is stamped either way, so a read that
//!   began before the commit cannot put the old value back.
//! - **Writes of one key are ordered by the store's locks**: a transaction writes an inode or a
//!   directory's names only under that inode's lock, so two pending writers of one key cannot
//!   overlap without the dirty mark seeing it.
//!
//! # Coherence across engines
//! Each commit is announced; another engine's note drops the keys it names and asks its
//! kernels to forget them too ([`Invalidation`]). Until the feed has said it delivers
//! (`Resumed`), and from the moment it says it may have lost notes, the cache serves nothing
//! and is emptied. Values also expire after `EngineConfig::meta_cache_ttl`, which bounds
//! staleness when an engine dies between a commit and its announcement.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tracing::{debug, warn};

use crate::backend::changes::{Change, ChangeNote, FeedEvent, Watch};
use crate::backend::{Backend, DentryRecord};
use crate::filesystem::{Invalidation, Invalidations};
use crate::types::{Ino, Inode, LayerId, TenantId};

/// Stripes of invalidation epochs: a read is refused when any key of its stripe changed, so
/// more stripes refuse fewer innocent reads.
const STRIPES: usize = 4096;
/// Invalidations queued for the kernels before a slow reader misses some (its kernel's
/// caches then expire by their timeouts).
const KERNEL_QUEUE: usize = 4096;

/// The sender of invalidations heard from other engines (no volume of this one has that number).
const FROM_ELSEWHERE: u64 = u64::MAX;

/// A key of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Inode(Ino),
    Entry(Ino, Box<[u8]>),
}

/// What a key holds: an inode, or a name (`None`: known absent).
#[derive(Debug, Clone)]
pub(super) enum Value {
    Inode(Inode),
    Entry(Option<DentryRecord>),
}

/// The caches of an engine, one per tenant it has volumes of.
pub(super) struct MetaCaches {
    tenants: Mutex<HashMap<TenantId, Weak<TenantMeta>>>,
    /// 0: nothing is served from memory, but commits are still announced and other engines'
    /// changes still passed to the kernels.
    entries: u64,
    ttl: Duration,
}

impl MetaCaches {
    /// `entries` inodes and as many names per tenant; 0 serves nothing from memory (commits are
    /// still announced and other engines' changes still passed to the kernels).
    pub(super) fn new(entries: u64, ttl: Duration) -> MetaCaches {
        MetaCaches {
            tenants: Mutex::default(),
            entries,
            ttl,
        }
    }

    /// The cache of `tenant`, created and subscribed to the feed on first use.
    pub(super) async fn tenant(
        &self,
        backend: &Arc<dyn Backend>,
        tenant: TenantId,
        head: LayerId,
        origin: u64,
    ) -> Arc<TenantMeta> {
        let meta = {
            let mut tenants = super::lock(&self.tenants);
            if let Some(meta) = tenants.get(&tenant).and_then(Weak::upgrade) {
                return meta;
            }
            tenants.retain(|_, m| m.strong_count() > 0);
            let meta = Arc::new(TenantMeta::new(
                tenant,
                head,
                origin,
                self.entries,
                self.ttl,
            ));
            tenants.insert(tenant, Arc::downgrade(&meta));
            meta
        };
        let weak = Arc::downgrade(&meta);
        let listener = Arc::new(move |event: FeedEvent<'_>| {
            if let Some(meta) = weak.upgrade() {
                meta.hear(event);
            }
        });
        match backend.watch(tenant, listener).await {
            Ok(watch) => *super::lock(&meta.watch) = Some(watch),
            // Never synced: the cache stays empty and every read goes to the store.
            Err(e) => warn!(error = %e, "no change feed: metadata is not cached"),
        }
        meta
    }
}

/// A write in flight on a key.
#[derive(Debug)]
struct Pending {
    writers: u32,
    /// Changed by someone else meanwhile: the writers' values may be older than the store's.
    dirty: bool,
}

struct State {
    /// The feed is known to deliver (and caching is on): the cache may serve.
    synced: bool,
    /// The head layer the cached values were read through.
    head: LayerId,
    epoch: u64,
    /// Reads begun before this epoch fill nothing (the cache was emptied after them).
    cleared_at: u64,
    stripes: Box<[u64]>,
    pending: HashMap<Key, Pending>,
}

/// One tenant's cache (see the module docs).
pub(super) struct TenantMeta {
    origin: u64,
    /// Caching is on (`EngineConfig::meta_cache_entries` > 0).
    serving: bool,
    state: Mutex<State>,
    hasher: std::collections::hash_map::RandomState,
    inodes: moka::sync::Cache<Ino, Inode>,
    entries: moka::sync::Cache<(Ino, Box<[u8]>), Option<DentryRecord>>,
    /// Invalidations for the kernels of the engine's mounts, with the volume that caused them
    /// ([`FROM_ELSEWHERE`]: another engine).
    kernel: broadcast::Sender<(u64, Invalidation)>,
    /// Woken when another engine switched the tenant to another tree.
    pub(super) tree_moved: Notify,
    watch: Mutex<Option<Watch>>,
}

impl TenantMeta {
    fn new(tenant: TenantId, head: LayerId, origin: u64, entries: u64, ttl: Duration) -> Self {
        debug!(tenant = tenant.0, entries, "metadata cache");
        TenantMeta {
            origin,
            serving: entries > 0,
            state: Mutex::new(State {
                synced: false,
                head,
                epoch: 1,
                cleared_at: 1,
                stripes: vec![0; STRIPES].into_boxed_slice(),
                pending: HashMap::new(),
            }),
            hasher: std::collections::hash_map::RandomState::new(),
            inodes: moka::sync::Cache::builder()
                .max_capacity(entries.max(1))
                .time_to_live(ttl)
                .build(),
            entries: moka::sync::Cache::builder()
                .max_capacity(entries.max(1))
                .time_to_live(ttl)
                .build(),
            kernel: broadcast::channel(KERNEL_QUEUE).0,
            tree_moved: Notify::new(),
            watch: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        super::lock(&self.state)
    }

    fn stripe(&self, key: &Key) -> usize {
        // The modulo keeps the index in range: the cast cannot lose anything that matters.
        (self.hasher.hash_one(key) % STRIPES as u64) as usize
    }

    /// The current epoch: what a read notes before it asks the store.
    pub(super) fn epoch(&self) -> u64 {
        self.state().epoch
    }

    pub(super) fn inode(&self, head: LayerId, ino: Ino) -> Option<Inode> {
        let st = self.state();
        if !st.synced || st.head != head {
            return None;
        }
        self.inodes.get(&ino)
    }

    /// `Some(None)`: known absent.
    pub(super) fn entry(
        &self,
        head: LayerId,
        parent: Ino,
        name: &[u8],
    ) -> Option<Option<DentryRecord>> {
        let st = self.state();
        if !st.synced || st.head != head {
            return None;
        }
        self.entries.get(&(parent, Box::from(name)))
    }

    /// Fill `key` with what a read begun at `since` found, unless something changed it since.
    pub(super) fn offer(&self, head: LayerId, since: u64, key: Key, value: Value) {
        let stripe = self.stripe(&key);
        let st = self.state();
        if !st.synced
            || st.head != head
            || since < st.cleared_at
            || st.stripes[stripe] > since
            || st.pending.contains_key(&key)
        {
            return;
        }
        self.put(key, value);
    }

    fn put(&self, key: Key, value: Value) {
        match (key, value) {
            (Key::Inode(ino), Value::Inode(inode)) => self.inodes.insert(ino, inode),
            (Key::Entry(parent, name), Value::Entry(entry)) => {
                self.entries.insert((parent, name), entry)
            }
            // A key and a value of different kinds: keep nothing rather than something wrong.
            (key, _) => self.remove(&key),
        }
    }

    fn remove(&self, key: &Key) {
        match key {
            Key::Inode(ino) => self.inodes.invalidate(ino),
            Key::Entry(parent, name) => self.entries.invalidate(&(*parent, name.clone())),
        }
    }

    /// Drop `key` and stamp its stripe (the state is locked by the caller).
    fn invalidate(&self, st: &mut State, key: &Key) {
        st.epoch += 1;
        let stripe = self.stripe(key);
        st.stripes[stripe] = st.epoch;
        if let Some(p) = st.pending.get_mut(key) {
            p.dirty = true;
        }
        self.remove(key);
    }

    /// A transaction is about to write `key`.
    pub(super) fn begin_write(&self, key: &Key) {
        let mut st = self.state();
        self.invalidate(&mut st, key);
        st.pending
            .entry(key.clone())
            .and_modify(|p| {
                p.writers += 1;
                p.dirty = true;
            })
            .or_insert(Pending {
                writers: 1,
                dirty: false,
            });
    }

    /// The transaction that wrote these keys ended: committed through `head` with these
    /// values (`None`: forget the key), or not committed.
    pub(super) fn end_writes(
        &self,
        head: LayerId,
        writes: Vec<(Key, Option<Value>)>,
        committed: bool,
    ) {
        let mut st = self.state();
        for (key, value) in writes {
            let alone = match st.pending.get_mut(&key) {
                Some(p) if p.writers > 1 => {
                    p.writers -= 1;
                    false
                }
                Some(p) => {
                    let clean = !p.dirty;
                    st.pending.remove(&key);
                    clean
                }
                None => false,
            };
            st.epoch += 1;
            let stripe = self.stripe(&key);
            st.stripes[stripe] = st.epoch;
            match value {
                Some(value) if committed && alone && st.synced && st.head == head => {
                    self.put(key, value)
                }
                _ => self.remove(&key),
            }
        }
    }

    /// A transaction read `key` under its locks and found `value`: a cached value that differs
    /// is stale (another engine's note is still on its way), and goes.
    pub(super) fn check(&self, head: LayerId, key: Key, value: Option<&Value>) {
        let cached = match &key {
            Key::Inode(ino) => self.inodes.get(ino).map(Value::Inode),
            Key::Entry(parent, name) => {
                self.entries.get(&(*parent, name.clone())).map(Value::Entry)
            }
        };
        let Some(cached) = cached else { return };
        let same = match (&cached, value) {
            (Value::Inode(a), Some(Value::Inode(b))) => a == b,
            (Value::Entry(a), Some(Value::Entry(b))) => a == b,
            (Value::Entry(None), None) => true,
            _ => false,
        };
        if !same {
            let mut st = self.state();
            if st.head == head {
                self.invalidate(&mut st, &key);
            }
        }
    }

    /// The volumes moved to `head`. What is cached goes even when the tree is the same (a
    /// checkpoint): a volume still reading through the old head may have filled in values
    /// that the new head's writes, announced meanwhile, had already replaced.
    pub(super) fn follow(&self, head: LayerId) {
        let mut st = self.state();
        if st.head == head {
            return;
        }
        st.head = head;
        self.clear(&mut st);
    }

    fn clear(&self, st: &mut State) {
        st.epoch += 1;
        st.cleared_at = st.epoch;
        self.inodes.invalidate_all();
        self.entries.invalidate_all();
        for p in st.pending.values_mut() {
            p.dirty = true;
        }
    }

    /// Tell the other engines, and this engine's other mounts, what a commit changed.
    pub(super) fn announce(
        &self,
        backend: &dyn Backend,
        tenant: TenantId,
        volume: u64,
        changes: Vec<Change>,
    ) {
        for change in &changes {
            if let Some(inv) = invalidation(change) {
                let _ = self.kernel.send((volume, inv));
            }
        }
        backend.announce(ChangeNote {
            tenant,
            origin: self.origin,
            changes,
        });
    }

    /// What the kernels of the volume `own` must forget.
    pub(super) fn invalidations(&self, own: u64) -> Invalidations {
        Invalidations::new(self.kernel.subscribe(), own)
    }

    fn hear(&self, event: FeedEvent<'_>) {
        match event {
            FeedEvent::Note(note) if note.origin == self.origin => {}
            FeedEvent::Note(note) => {
                let mut st = self.state();
                for change in &note.changes {
                    match change {
                        Change::Inode(ino) => self.invalidate(&mut st, &Key::Inode(*ino)),
                        Change::Entry(parent, name) => self.invalidate(
                            &mut st,
                            &Key::Entry(*parent, name.clone().into_boxed_slice()),
                        ),
                        Change::Tree => {
                            self.clear(&mut st);
                            self.tree_moved.notify_waiters();
                        }
                    }
                    if let Some(inv) = invalidation(change) {
                        let _ = self.kernel.send((FROM_ELSEWHERE, inv));
                    }
                }
            }
            FeedEvent::Lost => {
                let mut st = self.state();
                st.synced = false;
                self.clear(&mut st);
            }
            FeedEvent::Resumed => {
                let mut st = self.state();
                self.clear(&mut st);
                st.synced = self.serving;
            }
        }
    }
}

fn invalidation(change: &Change) -> Option<Invalidation> {
    match change {
        Change::Inode(ino) => Some(Invalidation::Inode(*ino)),
        Change::Entry(parent, name) => Some(Invalidation::Entry {
            parent: *parent,
            name: name.clone(),
        }),
        Change::Tree => None,
    }
}
