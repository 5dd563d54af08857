//! Tenant administration: create, list, inspect, change quotas, delete and purge.
//!
//! A tenant name is a DNS-style name (RFC 1123 subdomain: lowercase letters, digits, `-` and `.`,
//! up to 253 characters, labels of at most 63 that start and end alphanumerically) so it can be a
//! Kubernetes PVC or namespace-derived name unchanged.

use serde::{Deserialize, Serialize};
use tracing::info;

use super::Engine;
use super::build_view;
use super::layers::{LayerRef, LayerTree};
use crate::audit::AuditLevel;
use crate::backend::{Compression, NewClone, NewTenant, TenantAudit, TenantRecord, TenantState};
use crate::error::{BackendError, FsError, FsResult};
use crate::types::{FileType, Ino, Inode, Quota, TenantId, Timestamp, Usage};

/// Default block size: large enough that a PostgreSQL row per block keeps up with sequential I/O,
/// small enough that a random 4 KiB write does not rewrite much (see docs/design.md).
pub const DEFAULT_BLOCK_SIZE: u32 = 256 << 10;

/// Options of a new tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantOptions {
    /// Block size in bytes: a power of two from 4 KiB to 4 MiB.
    pub block_size: u32,
    pub compression: Compression,
    pub quota: Quota,
    /// Owner and mode of the root directory.
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_mode: u16,
    /// What the tenant belongs to outside Tarbox (see [`TenantRecord::owner`]).
    pub owner: Option<String>,
    /// Where its file data lives, fixed for its life: `None` in the database, else a block store
    /// URL (`file:///path`; see [`crate::store`]).
    pub data_url: Option<String>,
}

impl Default for TenantOptions {
    fn default() -> Self {
        TenantOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            compression: Compression::Zstd,
            quota: Quota::default(),
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            owner: None,
            data_url: None,
        }
    }
}

/// Options of a clone. Block size and compression are the source's (the blocks are shared
/// byte for byte).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneOptions {
    pub quota: Quota,
    /// What the clone belongs to outside Tarbox (see [`TenantRecord::owner`]).
    pub owner: Option<String>,
}

/// A tenant as administrators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    /// The tenant's number, fixed for its life and never reused.
    pub id: TenantId,
    pub name: String,
    pub state: TenantState,
    pub block_size: u32,
    pub compression: Compression,
    pub quota: Quota,
    pub usage: Usage,
    pub created_at: Timestamp,
    /// The tenant's audit level and retention (`None`: the engine's default, shown filled in).
    pub audit_level: AuditLevel,
    pub audit_retention_days: u32,
    /// Whether the level and retention are the tenant's own or the engine's defaults.
    pub audit: TenantAudit,
    /// What the tenant belongs to outside Tarbox, if anything.
    pub owner: Option<String>,
    /// Where its file data lives: `None` in the database, else the block store's URL.
    pub data_url: Option<String>,
    /// How many rules its access policy has; `None` without one.
    pub access_policy_rules: Option<usize>,
}

/// Check a tenant name (RFC 1123 subdomain, at most 253 characters), naming what is wrong.
pub fn validate_tenant_name(name: &str) -> FsResult<()> {
    let bad = |why: &str| {
        Err(FsError::BadInput(format!(
            "invalid tenant name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("empty label between dots");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only lowercase letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("labels must start and end with a letter or digit");
        }
    }
    Ok(())
}

impl Engine {
    /// Create a tenant with an empty root directory. `EEXIST` if the name is taken.
    pub async fn create_tenant(&self, name: &str, options: TenantOptions) -> FsResult<TenantInfo> {
        validate_tenant_name(name)?;
        let bs = options.block_size;
        if !bs.is_power_of_two() || !(4096..=4 << 20).contains(&bs) {
            return Err(FsError::BadInput(format!(
                "invalid block size {bs}: must be a power of two from 4096 to 4194304"
            )));
        }
        let now = self.shared.now();
        let root = Inode {
            ino: Ino::ROOT,
            kind: FileType::Directory,
            perm: options.root_mode & 0o7777,
            uid: options.root_uid,
            gid: options.root_gid,
            nlink: 2,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            btime: now,
            rdev: 0,
            parent: Ino::ROOT,
            target: Vec::new(),
        };
        let new = NewTenant {
            name: name.to_string(),
            block_size: bs,
            compression: options.compression,
            quota: options.quota,
            root,
            created_at: now,
            owner: options.owner.clone(),
            data_url: options.data_url.clone(),
        };
        if let Some(url) = &new.data_url {
            // Opened now, so a bad URL or an unusable directory fails the creation.
            self.shared
                .store(url)
                .await
                .map_err(|e| FsError::BadInput(e.to_string()))?;
        }
        let record = self
            .shared
            .backend
            .create_tenant(&new)
            .await
            .map_err(|e| match e {
                BackendError::TenantExists => FsError::TenantExists(name.to_string()),
                e => e.into(),
            })?;
        info!(tenant = name, block_size = bs, "tenant created");
        self.info_of(record).await
    }

    /// Create tenant `name` holding exactly the tree of `source` at checkpoint `layer` (its live
    /// tree with `None`): modes, owners, times, hard links, symlinks, extended attributes and
    /// data. The store copies the rows itself, so no file data passes through the engine; the
    /// clone starts without history (its base layer is that tree). A live tree is cloned as its
    /// last committed transaction left it: what open files still buffer is not in it. A
    /// retired tenant can be cloned from its checkpoints only. `EEXIST` if the name is taken.
    pub async fn clone_tenant(
        &self,
        source: &str,
        layer: Option<&LayerRef>,
        name: &str,
        options: CloneOptions,
    ) -> FsResult<TenantInfo> {
        validate_tenant_name(name)?;
        // A layer of the view may be dropped between reading the tree and cloning: read again.
        let mut attempts = 0;
        let (clone, at) = loop {
            attempts += 1;
            let record = self.tenant_record(source).await?;
            let tree = LayerTree {
                head: record.head_layer,
                layers: self.shared.backend.layers(record.id).await?,
            };
            let at = match (record.state, layer) {
                (TenantState::Deleted, _) => {
                    return Err(FsError::TenantNotFound(source.to_string()));
                }
                (TenantState::Retired, None) => {
                    return Err(FsError::BadInput(format!(
                        "tenant {source} is retired: only its checkpoints can be cloned"
                    )));
                }
                (_, Some(layer)) => tree.resolve(layer)?.id,
                (TenantState::Active, None) => record.head_layer,
            };
            let new = NewClone {
                source: build_view(self.shared.backend.as_ref(), record.id, at).await?,
                name: name.to_string(),
                quota: options.quota,
                created_at: self.shared.now(),
                owner: options.owner.clone(),
            };
            let copier = self
                .clone_copier(record.id, record.data_url.as_deref())
                .await?;
            match self
                .shared
                .backend
                .clone_tenant(&new, copier.as_deref())
                .await
            {
                Ok(clone) => break (clone, at),
                // A source block reaped while the clone copied it: the tree moved on.
                Err(BackendError::StaleView | BackendError::BlockMissing(_)) if attempts < 3 => {
                    continue;
                }
                Err(BackendError::TenantExists) => {
                    return Err(FsError::TenantExists(name.to_string()));
                }
                Err(BackendError::TenantGone) => {
                    return Err(FsError::TenantNotFound(source.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        };
        info!(tenant = name, source, layer = at.0, "tenant cloned");
        self.info_of(clone).await
    }

    /// Give up a tenant's live tree but keep its checkpoints (a Kubernetes volume deleted while
    /// snapshots of it remain): no volume opens it any more and its mounts' writes fail, while
    /// its checkpoints can still be cloned and dropped. A tenant without checkpoints is marked
    /// deleted instead. Returns the state it is left in.
    pub async fn retire_tenant(&self, name: &str) -> FsResult<TenantState> {
        let record = self.tenant_record(name).await?;
        if record.state == TenantState::Deleted {
            return Ok(TenantState::Deleted);
        }
        let layers = self.shared.backend.layers(record.id).await?;
        if layers.iter().any(|l| l.name.is_some()) {
            self.shared.backend.retire_tenant(record.id).await?;
            info!(tenant = name, "tenant retired: its checkpoints are kept");
            return Ok(TenantState::Retired);
        }
        self.shared.backend.mark_tenant_deleted(record.id).await?;
        info!(tenant = name, "tenant marked deleted");
        Ok(TenantState::Deleted)
    }

    /// Drop checkpoint `layer` of a retired tenant, folded into the layers built on it. The
    /// tenant's data goes with its last checkpoint: it is then marked deleted.
    pub async fn drop_retired_checkpoint(&self, name: &str, layer: &LayerRef) -> FsResult<()> {
        let record = self.tenant_record(name).await?;
        if record.state != TenantState::Retired {
            return Err(FsError::BadInput(format!("tenant {name} is not retired")));
        }
        let tree = LayerTree {
            head: record.head_layer,
            layers: self.shared.backend.layers(record.id).await?,
        };
        let target = tree.resolve(layer)?;
        let others = tree
            .layers
            .iter()
            .filter(|l| l.name.is_some() && l.id != target.id)
            .count();
        if others == 0 {
            self.shared.backend.mark_tenant_deleted(record.id).await?;
            info!(
                tenant = name,
                "last checkpoint of a retired tenant dropped: tenant deleted"
            );
            return Ok(());
        }
        if target.id == record.head_layer {
            return Err(FsError::LayerBusy(format!(
                "layer {} is the retired tenant's head",
                LayerTree::label(target)
            )));
        }
        let children = tree.children(target.id);
        self.shared
            .backend
            .drop_layer(record.id, record.head_layer, target.id, &children)
            .await?;
        info!(tenant = name, layer = %layer, "dropped a checkpoint of a retired tenant");
        Ok(())
    }

    /// Every tenant, deleted ones included, sorted by name.
    pub async fn list_tenants(&self) -> FsResult<Vec<TenantInfo>> {
        let mut out = Vec::new();
        for record in self.shared.backend.list_tenants().await? {
            match self.info_of(record).await {
                Ok(info) => out.push(info),
                // Purged (by another engine or the background purger) between the listing and
                // the usage query: it no longer exists, which is not an error of the listing.
                Err(FsError::Backend(BackendError::TenantGone)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One tenant, active or deleted.
    pub async fn tenant_info(&self, name: &str) -> FsResult<TenantInfo> {
        let record = self.tenant_record(name).await?;
        self.info_of(record).await
    }

    /// Replace a tenant's quota; applies at once to every engine using the tenant. Lowering it
    /// below current usage refuses further growth but deletes nothing.
    pub async fn set_quota(&self, name: &str, quota: Quota) -> FsResult<TenantInfo> {
        let record = self.active_tenant(name).await?;
        self.shared.backend.set_quota(record.id, quota).await?;
        self.tenant_info(name).await
    }

    /// Mark a tenant deleted: new volumes and transactions are refused at once; its data is removed
    /// by [`Engine::purge_deleted_tenants`].
    pub async fn delete_tenant(&self, name: &str) -> FsResult<()> {
        let record = self.tenant_record(name).await?;
        self.shared.backend.mark_tenant_deleted(record.id).await?;
        info!(tenant = name, "tenant marked deleted");
        Ok(())
    }

    /// Remove the rows of tenant `name` if it is marked deleted (frees its name at once);
    /// `EINVAL` for a tenant that is not.
    pub async fn purge_tenant(&self, name: &str) -> FsResult<()> {
        let record = self.tenant_record(name).await?;
        if record.state != TenantState::Deleted {
            return Err(FsError::BadInput(format!(
                "tenant {name} is not deleted; delete it before purging it"
            )));
        }
        self.purge_record(&record).await?;
        info!(tenant = name, "tenant purged");
        Ok(())
    }

    /// Remove the rows of every tenant marked deleted, and of retired tenants left without a
    /// checkpoint. Returns the names purged. A tenant that cannot be purged now (its block
    /// store is unreachable) is logged and left for the next round; it holds up no other.
    pub async fn purge_deleted_tenants(&self) -> FsResult<Vec<String>> {
        let mut purged = Vec::new();
        for record in self.shared.backend.list_tenants().await? {
            match self.purge_if_done(&record).await {
                Ok(true) => purged.push(record.name),
                Ok(false) | Err(FsError::Backend(BackendError::TenantGone)) => {}
                Err(e) => {
                    tracing::warn!(tenant = %record.name, error = %e, "cannot purge a deleted tenant yet");
                }
            }
        }
        Ok(purged)
    }

    /// Purge `record` if it is deleted, or retired without a checkpoint left (a volume and its
    /// last snapshot deleted at once keep nothing). Whether it was purged.
    async fn purge_if_done(&self, record: &TenantRecord) -> FsResult<bool> {
        match record.state {
            TenantState::Retired => {
                let layers = self.shared.backend.layers(record.id).await?;
                if layers.iter().any(|l| l.name.is_some()) {
                    return Ok(false);
                }
                self.shared.backend.mark_tenant_deleted(record.id).await?;
                self.purge_record(record).await?;
                info!(tenant = %record.name, "retired tenant without checkpoints purged");
                Ok(true)
            }
            TenantState::Deleted => {
                self.purge_record(record).await?;
                info!(tenant = %record.name, "tenant purged");
                Ok(true)
            }
            TenantState::Active => Ok(false),
        }
    }

    /// Purge a deleted tenant: its block store's objects first, then its rows, so a purge cut
    /// short leaves rows to find again rather than objects nothing names.
    async fn purge_record(&self, record: &TenantRecord) -> FsResult<()> {
        self.purge_store(record.id, record.data_url.as_deref())
            .await?;
        self.shared.backend.purge_tenant(record.id).await?;
        Ok(())
    }

    /// Start a background task that purges deleted tenants every `interval`.
    pub fn spawn_purger(&self, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = engine.purge_deleted_tenants().await {
                    tracing::warn!(error = %e, "purging deleted tenants failed");
                }
            }
        })
    }

    /// The tenant with number `id`, active or deleted; `None` if there is none (any more).
    pub async fn tenant_info_by_id(&self, id: TenantId) -> FsResult<Option<TenantInfo>> {
        match self.shared.backend.tenant_by_id(id).await? {
            Some(record) => Ok(Some(self.info_of(record).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn tenant_record(&self, name: &str) -> FsResult<TenantRecord> {
        self.shared
            .backend
            .tenant_by_name(name)
            .await?
            .ok_or_else(|| FsError::TenantNotFound(name.to_string()))
    }

    /// The tenant, refusing deleted ones as not found.
    pub(super) async fn active_tenant(&self, name: &str) -> FsResult<TenantRecord> {
        let record = self.tenant_record(name).await?;
        if record.state != TenantState::Active {
            return Err(FsError::TenantNotFound(name.to_string()));
        }
        Ok(record)
    }

    async fn info_of(&self, record: TenantRecord) -> FsResult<TenantInfo> {
        let usage = self.shared.backend.usage(record.id).await?;
        Ok(TenantInfo {
            owner: record.owner.clone(),
            data_url: record.data_url.clone(),
            access_policy_rules: record
                .access_policy
                .as_deref()
                .map(|text| crate::policy::AccessPolicy::parse(text).map_or(0, |p| p.rule_count())),
            id: record.id,
            name: record.name,
            state: record.state,
            block_size: record.block_size,
            compression: record.compression,
            quota: record.quota,
            usage,
            created_at: record.created_at,
            audit_level: record
                .audit
                .level
                .unwrap_or(self.shared.config.audit.default_level),
            audit_retention_days: record
                .audit
                .retention_days
                .unwrap_or(self.shared.config.audit.default_retention_days),
            audit: record.audit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::validate_tenant_name;

    #[test]
    fn tenant_names_are_dns_subdomains() {
        for ok in ["a", "agent-1", "pvc-0a1b.ns.cluster", &"a".repeat(63)] {
            assert!(validate_tenant_name(ok).is_ok(), "{ok}");
        }
        let long = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(long.len(), 253);
        assert!(validate_tenant_name(&long).is_ok());
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a..b",
            "a_b",
            &"a".repeat(64),
            &format!("{long}x"),
        ] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
