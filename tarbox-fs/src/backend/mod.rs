//! The storage backend contract.
//!
//! A backend stores tenants, layers, inode versions, directory entries, block mappings,
//! content-addressed blocks and extended attributes. It knows nothing of POSIX: it never checks a
//! permission, a name, a file type or a link count. The engine decides; the backend stores
//! atomically.
//!
//! # The layer model, as a backend sees it
//! Every inode version, directory entry, block mapping and xattr row belongs to one layer. A
//! [`LayerView`] is a chain of layers from the head (`chain[0]`, the only one written through) down
//! to the tenant's base layer. Reading a key through a view returns the row of the *first* layer in
//! the chain that has one; a *tombstone* row (a whiteout) in a newer layer hides rows of older
//! layers. Writing through a view only ever touches rows of the head layer: older layers are frozen
//! history and are never modified by file operations. Because layer ids grow monotonically, the
//! first layer of a chain that has a row is the one with the largest id.
//!
//! # Transactions and locking
//! Reads outside a transaction ([`Backend::reader`]) see committed data. Every mutating engine
//! operation runs in exactly one [`StoreTxn`], opened by [`Backend::begin`] with the set of inodes it
//! will modify. The backend holds an exclusive lock on each of those inodes (across every engine that
//! shares the store) until commit or drop, so the engine may read, decide and write without races.
//! A transaction dropped without [`StoreTxn::commit`] has no effect.
//!
//! # Content-addressed blocks
//! File data is cut into blocks of the tenant's block size. A block is stored once per tenant under
//! its BLAKE3 hash and reference-counted by the block mappings that name it. Inserting a block that
//! already exists (even one inserted concurrently by another engine) only increments its count and
//! never fails. What happens at a count of zero depends on where the block's bytes are:
//! - in the row (`data` not empty, tenants without a block store): the row is deleted in the
//!   transaction that released the last reference;
//! - in the tenant's [`crate::store::BlockStore`] (`data` empty): the row stays, *dead*, until
//!   [`Backend::claim_dead_blocks`] hands it to the engine's reaper, which deletes the object and
//!   then the row. Reviving a dead row (a new reference before the reaper claims it) needs no
//!   new object. See [`crate::store`] for why this order is safe.

pub mod changes;
pub mod faulty;
pub mod memory;
pub mod postgres;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::audit::AuditStore;
use crate::error::{BackendError, BackendResult, QuotaKind};
use crate::types::{FileType, Ino, Inode, LayerId, Quota, TenantId, Timestamp, Usage};

/// A BLAKE3 hash naming a block's uncompressed content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A block as stored: possibly compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    pub hash: BlockHash,
    /// Whether `data` is zstd-compressed.
    pub compressed: bool,
    /// The stored bytes. Empty in the rows of a tenant with a block store: a block is never
    /// empty (all-zero blocks are holes), so empty means "in the store".
    pub data: Bytes,
    /// For a patched block (`data` is its manifest, always in the row, never in a block store):
    /// the blocks it names, each as often as named; the row holds one reference to each while
    /// it exists. Empty for a plain block.
    pub parts: Vec<BlockHash>,
}

/// Copies blocks of a clone's source into the clone's block store (see
/// [`Backend::clone_tenant`]).
#[async_trait]
pub trait CopyBlocks: Send + Sync {
    /// Make `hashes` blocks of tenant `to`; fails with [`BackendError::BlockMissing`] when the
    /// source no longer has one.
    async fn copy(&self, to: TenantId, hashes: &[BlockHash]) -> BackendResult<()>;
}

/// Dead blocks claimed by the reaper: locked against revival until [`DeadBlocks::forget`] or
/// drop (which releases them untouched).
#[async_trait]
pub trait DeadBlocks: Send {
    /// The claimed blocks: no reference names them, and none can until the claim ends.
    fn hashes(&self) -> &[BlockHash];

    /// Delete the claimed rows and bump the tenant's reap epoch, atomically. Call only after the
    /// blocks' objects were deleted.
    async fn forget(self: Box<Self>) -> BackendResult<()>;
}

/// How block data is compressed for a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    /// zstd at a fast level; blocks that do not shrink are stored uncompressed.
    #[default]
    Zstd,
}

impl Compression {
    pub fn code(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }

    pub fn from_code(code: i16) -> Option<Compression> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Whether a tenant may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    Active,
    /// Marked deleted: refused for new access, its rows are purged in the background.
    Deleted,
    /// Given up by its owner but kept for its checkpoints (a Kubernetes volume deleted while
    /// snapshots of it remain): no volume opens it and nothing writes its tree, but its
    /// checkpoints can still be cloned from and dropped.
    Retired,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: String,
    pub state: TenantState,
    /// The layer file operations write to.
    pub head_layer: LayerId,
    pub block_size: u32,
    pub compression: Compression,
    pub quota: Quota,
    pub created_at: Timestamp,
    /// Seconds between automatic checkpoints; `None` when off.
    pub auto_checkpoint_secs: Option<u64>,
    /// Audit settings; `None` uses the engine's defaults.
    pub audit: TenantAudit,
    /// What the tenant belongs to outside Tarbox (e.g. `pvc:<namespace>/<name>` for a Kubernetes
    /// volume), fixed at creation; `None` for tenants made by hand.
    pub owner: Option<String>,
    /// Where the tenant's block contents live, fixed at creation: `None` in the backend itself
    /// (the block rows), else the URL of a [`crate::store::BlockStore`].
    pub data_url: Option<String>,
    /// The tenant's pod-level access policy (TOML, see [`crate::policy`]); `None` for none.
    pub access_policy: Option<String>,
    /// The tenant's own native mounts (TOML, see [`crate::native`]); `None` for none.
    pub native_mounts: Option<String>,
}

/// A tenant's audit settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantAudit {
    pub level: Option<crate::audit::AuditLevel>,
    pub retention_days: Option<u32>,
}

/// What [`Backend::create_tenant`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub name: String,
    pub block_size: u32,
    pub compression: Compression,
    pub quota: Quota,
    /// The root directory, stored as inode [`Ino::ROOT`] in the base layer.
    pub root: Inode,
    pub created_at: Timestamp,
    /// See [`TenantRecord::owner`].
    pub owner: Option<String>,
    /// See [`TenantRecord::data_url`].
    pub data_url: Option<String>,
}

/// What [`Backend::clone_tenant`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClone {
    /// The tree to copy: the view of one layer of the source tenant.
    pub source: LayerView,
    pub name: String,
    pub quota: Quota,
    pub created_at: Timestamp,
    /// See [`TenantRecord::owner`].
    pub owner: Option<String>,
}

/// A layer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub id: LayerId,
    pub tenant: TenantId,
    /// The layer this one was created on top of; `None` for the base layer.
    pub parent: Option<LayerId>,
    /// Checkpoint name, unique within the tenant; `None` for a working layer.
    pub name: Option<String>,
    pub description: String,
    pub created_at: Timestamp,
    /// When the layer stopped being the head (a checkpoint froze it or a switch left it); `None`
    /// while it is the head.
    pub frozen_at: Option<Timestamp>,
    /// The tenant's usage when the layer was frozen: a switch back to it restores this.
    pub usage: Option<Usage>,
}

/// What a switch does besides moving the head, as the engine decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSwitch {
    /// The tenant's usage after the switch (what the target recorded when it was frozen).
    pub usage: Option<Usage>,
    /// Delete the layer left if it holds no rows.
    pub discard_head: bool,
}

/// Keys written in a set of layers: what can differ between two views whose chains differ by
/// exactly those layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerChanges {
    /// Inodes with an inode, block mapping or xattr row in the layers, sorted.
    pub inodes: Vec<Ino>,
    /// Directory entries `(parent, name)` with a row in the layers, sorted.
    pub entries: Vec<(Ino, Vec<u8>)>,
}

/// The chain of layers a reader sees, head first. `chain[0]` is the only layer written through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerView {
    pub tenant: TenantId,
    pub chain: Arc<[LayerId]>,
}

impl LayerView {
    pub fn head(&self) -> LayerId {
        self.chain[0]
    }
}

/// A live directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DentryRecord {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileType,
    /// Position of the entry in its directory's listing order. Assigned when the name is bound and
    /// never changed afterwards; larger than every cookie assigned before it in the store, so
    /// entries created after a listing started sort after it.
    pub cookie: u64,
}

/// A block mapping to write: `None` makes the block a hole (reads as zeros, hides older layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockWrite {
    pub index: u64,
    pub block: Option<BlockHash>,
}

/// An orphan: an inode whose last name was removed while a session still had it open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    pub tenant: TenantId,
    pub ino: Ino,
}

/// Reads through a [`LayerView`]. Implemented by out-of-transaction readers and by transactions.
///
/// "Absent" is always `Ok(None)` (or an empty list), never an error.
#[async_trait]
pub trait StoreRead: Send {
    /// The newest version of `ino` in the view; `None` if no layer has it or its newest row is a
    /// tombstone.
    async fn inode(&mut self, ino: Ino) -> BackendResult<Option<Inode>>;

    /// The newest live versions of several inodes, in any order; absent ones are omitted.
    /// Backends should override this with one round trip.
    async fn inodes(&mut self, inos: &[Ino]) -> BackendResult<Vec<Inode>> {
        let mut out = Vec::with_capacity(inos.len());
        for ino in inos {
            if let Some(inode) = self.inode(*ino).await? {
                out.push(inode);
            }
        }
        Ok(out)
    }

    /// The live entry `name` of directory `parent`; `None` if absent or whited out.
    async fn lookup(&mut self, parent: Ino, name: &[u8]) -> BackendResult<Option<DentryRecord>>;

    /// The live entry `name` of `parent` together with the newest live version of the inode it
    /// names; `None` if the entry or the inode is absent. Backends should answer in one round
    /// trip: this is the path of every name lookup.
    async fn lookup_inode(
        &mut self,
        parent: Ino,
        name: &[u8],
    ) -> BackendResult<Option<(DentryRecord, Inode)>> {
        let Some(entry) = self.lookup(parent, name).await? else {
            return Ok(None);
        };
        Ok(self.inode(entry.ino).await?.map(|inode| (entry, inode)))
    }

    /// Up to `limit` live entries of `parent` with `cookie > after`, in increasing cookie order.
    async fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> BackendResult<Vec<DentryRecord>>;

    /// Whether `parent` has at least one live entry.
    async fn dir_has_entries(&mut self, parent: Ino) -> BackendResult<bool>;

    /// Live block mappings of `ino` with index in `range`, in increasing index order. Holes and
    /// indexes never written are omitted.
    async fn block_map(
        &mut self,
        ino: Ino,
        range: Range<u64>,
    ) -> BackendResult<Vec<(u64, BlockHash)>>;

    /// The stored blocks with these hashes, in any order. Blocks of this tenant only; a hash that
    /// is not stored is omitted (the engine reports corruption).
    async fn blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>>;

    /// The patched blocks (manifests with their parts) among `hashes`, in any order; plain
    /// blocks and hashes not stored are omitted. Never carries a plain block's data.
    async fn patched_blocks(&mut self, hashes: &[BlockHash]) -> BackendResult<Vec<StoredBlock>>;

    /// Value of the extended attribute `name` of `ino`; `None` if absent or removed.
    async fn xattr(&mut self, ino: Ino, name: &[u8]) -> BackendResult<Option<Vec<u8>>>;

    /// Names of the live extended attributes of `ino`, sorted.
    async fn xattr_names(&mut self, ino: Ino) -> BackendResult<Vec<Vec<u8>>>;
}

/// A transaction: reads see its own writes; nothing is visible to others until
/// [`StoreTxn::commit`]; dropping it without commit discards everything.
#[async_trait]
pub trait StoreTxn: StoreRead {
    /// Store `inode` as the head layer's version (insert or replace).
    async fn put_inode(&mut self, inode: &Inode) -> BackendResult<()>;

    /// Make `ino` absent from the view: delete its head-layer inode row, block mappings and xattrs
    /// (releasing block references), and write a tombstone if an older layer still has a version.
    async fn remove_inode(&mut self, ino: Ino) -> BackendResult<()>;

    /// Bind `name` in directory `parent` to `(ino, kind)` in the head layer, replacing any head row
    /// for that name (live or whiteout). A new binding gets a fresh cookie, returned.
    async fn bind(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileType,
    ) -> BackendResult<u64>;

    /// A new inode and its first name, in one step: charge `bytes` and one inode (refused as
    /// [`StoreTxn::charge`] refuses, then nothing changes), store `inode` and `dir` (the
    /// directory's new version), and bind `name` in `dir` to `inode`. Returns the binding's
    /// cookie. Backends should do it in one round trip: it is the path of every create.
    async fn create_entry(
        &mut self,
        dir: &Inode,
        name: &[u8],
        inode: &Inode,
        bytes: i64,
    ) -> BackendResult<Result<u64, QuotaKind>> {
        if let Err(kind) = self.charge(bytes, 1).await? {
            return Ok(Err(kind));
        }
        self.put_inode(inode).await?;
        let cookie = self.bind(dir.ino, name, inode.ino, inode.kind).await?;
        self.put_inode(dir).await?;
        Ok(Ok(cookie))
    }

    /// Remove `name` from `parent`: delete the head row, and write a whiteout if an older layer
    /// has a live entry of that name. Removing an absent name is a no-op.
    async fn unbind(&mut self, parent: Ino, name: &[u8]) -> BackendResult<()>;

    /// Store block mappings of `ino` in the head layer, replacing head rows of the same indexes and
    /// releasing the blocks they named. `new_blocks` are inserted (or their reference counts
    /// incremented, reviving dead rows) first; every hash named by `writes` must be in
    /// `new_blocks` or already stored, else [`BackendError::Conflict`]. Returns the blocks of a
    /// store (empty `data`) whose rows this call created rather than found: their objects were
    /// stored before, and may have been reaped since if [`StoreTxn::reap_epoch`] moved.
    async fn write_blocks(
        &mut self,
        ino: Ino,
        writes: &[BlockWrite],
        new_blocks: &[StoredBlock],
    ) -> BackendResult<Vec<BlockHash>>;

    /// The tenant's reap epoch as committed now: how many reaps have deleted objects.
    async fn reap_epoch(&mut self) -> BackendResult<u64>;

    /// Remove every block mapping of `ino` with index `>= first`: head rows are deleted (releasing
    /// their blocks) and indexes that older layers map get a hole row.
    async fn truncate_blocks(&mut self, ino: Ino, first: u64) -> BackendResult<()>;

    /// Set (`Some`) or remove (`None`) the extended attribute `name` of `ino` in the head layer.
    async fn set_xattr(&mut self, ino: Ino, name: &[u8], value: Option<&[u8]>)
    -> BackendResult<()>;

    /// Compare and charge: add the deltas to the tenant's usage unless
    /// [`Quota::exceeded_by`] refuses them against the tenant's quota and the latest committed
    /// usage (so concurrent transactions can never overshoot together), in which case nothing
    /// changes and the limit is returned as `Ok(Err(kind))`. Negative deltas always apply and
    /// saturate at zero.
    async fn charge(&mut self, bytes: i64, inodes: i64) -> BackendResult<Result<(), QuotaKind>>;

    /// Record that `ino` has no names left but is still open in session `session`.
    async fn add_orphan(&mut self, ino: Ino, session: u64) -> BackendResult<()>;

    /// Forget the orphan record of `ino` (it was reclaimed or linked again).
    async fn remove_orphan(&mut self, ino: Ino) -> BackendResult<()>;

    /// Append an audit event as part of this transaction (strict audit): it is stored if and only
    /// if the transaction commits.
    async fn record_audit(&mut self, event: &crate::audit::AuditEvent) -> BackendResult<()>;

    /// Make every write of this transaction durable and visible.
    async fn commit(self: Box<Self>) -> BackendResult<()>;
}

/// A storage backend. Cheap to share (`Arc<dyn Backend>`); safe to use from many tasks at once and
/// from many processes on one store.
#[async_trait]
pub trait Backend: AuditStore + Send + Sync + fmt::Debug + 'static {
    /// Short name for logs (`"memory"`, `"postgres"`).
    fn kind(&self) -> &'static str;

    /// Create a tenant atomically: its record, its base layer (which becomes the head), zero usage
    /// plus one inode, and `root` as inode [`Ino::ROOT`] of the base layer.
    /// Fails with [`BackendError::TenantExists`] if the name is taken (also by a deleted tenant not
    /// yet purged).
    async fn create_tenant(&self, new: &NewTenant) -> BackendResult<TenantRecord>;

    /// Create tenant `new.name` whose base layer (its head) holds exactly the tree `new.source`
    /// shows, flattened into that one layer: every inode with a link (orphans stay behind), its
    /// entries, block mappings and extended attributes, and the blocks they name, copied inside
    /// the store (no file data passes through the caller). The clone keeps the source's block
    /// size, compression, data location and inode numbers; its usage is recounted the way the
    /// engine charges ([`Inode::charged_bytes`] per inode). The source may be active or retired.
    /// When the source keeps its blocks in a block store, `copy` is given every block of the
    /// clone before the clone becomes visible, and its failure creates nothing. Fails with
    /// [`BackendError::TenantExists`] if the name is taken, and with
    /// [`BackendError::StaleView`] (creating nothing) if a layer of the source chain is gone.
    async fn clone_tenant(
        &self,
        new: &NewClone,
        copy: Option<&dyn CopyBlocks>,
    ) -> BackendResult<TenantRecord>;

    /// The tenant of that name, active or deleted; `None` if absent.
    async fn tenant_by_name(&self, name: &str) -> BackendResult<Option<TenantRecord>>;

    /// The tenant with that id; `None` if absent.
    async fn tenant_by_id(&self, id: TenantId) -> BackendResult<Option<TenantRecord>>;

    /// Every tenant, sorted by name.
    async fn list_tenants(&self) -> BackendResult<Vec<TenantRecord>>;

    /// Replace the tenant's quota. Takes effect for every engine at its next charge.
    async fn set_quota(&self, tenant: TenantId, quota: Quota) -> BackendResult<()>;

    /// Current usage of the tenant.
    async fn usage(&self, tenant: TenantId) -> BackendResult<Usage>;

    /// Mark the tenant deleted. Returns false if it was already deleted. Transactions begun after
    /// this fail with [`BackendError::TenantGone`].
    async fn mark_tenant_deleted(&self, tenant: TenantId) -> BackendResult<bool>;

    /// Retire an active tenant (see [`TenantState::Retired`]). Returns false if it was not active.
    /// Transactions begun after this fail with [`BackendError::TenantGone`].
    async fn retire_tenant(&self, tenant: TenantId) -> BackendResult<bool>;

    /// Delete every row of a tenant marked deleted, including its record.
    async fn purge_tenant(&self, tenant: TenantId) -> BackendResult<()>;

    /// The tenant's committed reap epoch (see [`StoreTxn::reap_epoch`]).
    async fn reap_epoch(&self, tenant: TenantId) -> BackendResult<u64>;

    /// Claim up to `limit` blocks of the tenant that have been dead for at least `grace`, for
    /// the reaper. Blocks claimed by another reaper are skipped.
    async fn claim_dead_blocks(
        &self,
        tenant: TenantId,
        grace: std::time::Duration,
        limit: usize,
    ) -> BackendResult<Box<dyn DeadBlocks>>;

    /// Record objects of the tenant's store that no row names (left by a crash between storing
    /// and committing) as dead blocks, so the reaper deletes them; hashes that have a row are
    /// left alone. Returns how many were adopted.
    async fn adopt_blocks(&self, tenant: TenantId, hashes: &[BlockHash]) -> BackendResult<u64>;

    /// Up to `limit` referenced blocks of the tenant with a hash greater than `after`, in
    /// increasing order.
    async fn block_hashes(
        &self,
        tenant: TenantId,
        after: Option<BlockHash>,
        limit: usize,
    ) -> BackendResult<Vec<BlockHash>>;

    /// Reserve `count` consecutive unused inode numbers of the tenant; returns the first.
    async fn alloc_inodes(&self, tenant: TenantId, count: u64) -> BackendResult<u64>;

    /// Every layer of the tenant, in increasing id order.
    async fn layers(&self, tenant: TenantId) -> BackendResult<Vec<LayerRecord>>;

    /// Set the interval of automatic checkpoints (`None`: off).
    async fn set_auto_checkpoint(&self, tenant: TenantId, secs: Option<u64>) -> BackendResult<()>;

    /// Replace the tenant's audit settings.
    async fn set_audit(&self, tenant: TenantId, audit: TenantAudit) -> BackendResult<()>;

    /// Replace the tenant's access policy (`None` removes it). The text is stored as given; the
    /// engine checks it first.
    async fn set_access_policy(&self, tenant: TenantId, policy: Option<&str>) -> BackendResult<()>;

    /// Replace the native mounts of `tenant`, or with `None` the ones shared by every tenant
    /// (`text` `None` removes them). Stored as given; the engine checks them first.
    async fn set_native_mounts(
        &self,
        tenant: Option<TenantId>,
        text: Option<&str>,
    ) -> BackendResult<()>;

    /// The native mounts shared by every tenant (TOML), if any.
    async fn shared_native_mounts(&self) -> BackendResult<Option<String>>;

    // Layer changes below are serialized against every file-operation transaction of the tenant:
    // each waits for the transactions writing through the current head to end, and transactions
    // begun through the old head afterwards fail with [`BackendError::StaleView`]. Each fails with
    // `StaleView` if `head` is no longer the tenant's head, and with `TenantGone` if the tenant is
    // deleted.

    /// Checkpoint: freeze the head layer as `name` (with `description`), recording `now` and the
    /// tenant's usage on it, and make a new empty layer on top of it the head. Copies nothing.
    /// Fails with [`BackendError::LayerExists`] if the tenant already has a layer of that name.
    /// Returns the new head.
    async fn checkpoint(
        &self,
        tenant: TenantId,
        head: LayerId,
        name: &str,
        description: &str,
        now: Timestamp,
    ) -> BackendResult<LayerRecord>;

    /// Switch (rollback or roll forward): freeze the head (with `now` and the usage), make a new
    /// empty layer on top of `target` the head, and set the tenant's usage to `usage` when given.
    /// With `discard_head`, the old head's record is deleted afterwards if it holds no rows
    /// (checked here, under the serialization above, so a concurrent write is never lost); the
    /// engine decides when to ask (see `Layers::switch_to`). Returns the new head.
    async fn switch_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        target: LayerId,
        switch: LayerSwitch,
        now: Timestamp,
    ) -> BackendResult<LayerRecord>;

    /// Delete `layer`, which is not the head, first copying each of its rows into each of
    /// `children` that has no row of the same key (so what every child shows is unchanged); the
    /// children then hang off `layer`'s parent. Blocks no longer referenced are deleted. Fails
    /// with [`BackendError::Conflict`] if `layer`'s children are not exactly `children`. Unlike
    /// the other layer changes it also serves a retired tenant.
    async fn drop_layer(
        &self,
        tenant: TenantId,
        head: LayerId,
        layer: LayerId,
        children: &[LayerId],
    ) -> BackendResult<()>;

    /// Whether `layer` holds no rows at all.
    async fn layer_is_empty(&self, tenant: TenantId, layer: LayerId) -> BackendResult<bool>;

    /// The keys written in any of `layers`.
    async fn layer_changes(
        &self,
        tenant: TenantId,
        layers: &[LayerId],
    ) -> BackendResult<LayerChanges>;

    /// A reader of committed data through `view`. Cheap; holds no connection between calls.
    fn reader(&self, view: &LayerView) -> Box<dyn StoreRead>;

    /// Begin a transaction writing through `view`, holding exclusive locks on `locks` until it
    /// ends. Fails with [`BackendError::StaleView`] if `view.head()` is no longer the tenant's head
    /// layer, and with [`BackendError::TenantGone`] if the tenant is deleted.
    async fn begin(&self, view: &LayerView, locks: &[Ino]) -> BackendResult<Box<dyn StoreTxn>>;

    /// Tell the engines watching `note.tenant` what a committed transaction changed (see
    /// [`changes`]). Returns at once; delivery follows, in order.
    fn announce(&self, note: changes::ChangeNote);

    /// Wait (a few seconds at most) until every note announced so far is sent: an engine
    /// closing must not take the last changes of a short-lived command with it.
    async fn flush_announcements(&self) {}

    /// Call `listener` with the notes announced for `tenant` from now on until the returned
    /// watch is dropped. The first event is [`changes::FeedEvent::Resumed`], once the feed is
    /// sure to deliver every later note (at once, or when the store can be reached).
    async fn watch(
        &self,
        tenant: TenantId,
        listener: changes::ChangeListener,
    ) -> BackendResult<changes::Watch>;

    /// Register a live engine session; returns its id. Sessions that stop calling
    /// [`Backend::heartbeat`] are considered dead after the stale interval.
    async fn open_session(&self, description: &str, now: Timestamp) -> BackendResult<u64>;

    /// Refresh a session's liveness.
    async fn heartbeat(&self, session: u64, now: Timestamp) -> BackendResult<()>;

    /// End a session cleanly.
    async fn close_session(&self, session: u64) -> BackendResult<()>;

    /// Orphans of `tenant` whose session is closed or has not sent a heartbeat since `stale_before`.
    async fn dead_orphans(
        &self,
        tenant: TenantId,
        stale_before: Timestamp,
    ) -> BackendResult<Vec<Orphan>>;
}

/// Open the backend named by `url`: `memory://` (a fresh in-memory store) or
/// `postgres://user@host:port/database` (migrated on open).
pub async fn open(url: &str) -> BackendResult<Arc<dyn Backend>> {
    if url == "memory://" || url == "memory:" || url == "memory" {
        return Ok(Arc::new(memory::MemoryBackend::new()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let backend = postgres::PostgresBackend::connect(url).await?;
        return Ok(Arc::new(backend));
    }
    // Only the scheme is shown: the rest of a URL may carry a password.
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    Err(BackendError::config(format!(
        "unsupported storage URL scheme {scheme:?}: expected memory:// or postgres://…"
    )))
}
