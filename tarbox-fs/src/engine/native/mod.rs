//! Native mounts in force in a volume: host directories shown at paths of the tenant's tree.
//!
//! A volume opened with native mounts (see [`VolumeOptions::native_mounts`]) reads the tenant's
//! definitions and the shared ones (see [`crate::native`]), opens each source directory
//! (`host.rs`) and hangs its root below the directory of the tree that holds the mount's path
//! (created if missing, on a writable volume). From then on:
//!
//! - a mount point hides whatever the tree has under the same name (as a mount on a local
//!   directory does); it cannot be removed or renamed (`EBUSY`) or created over (`EEXIST`), and
//!   the directory holding it cannot be removed;
//! - the operations of `api.rs` run through [`Volume::audited`] as any other, so the access
//!   policy and the audit trail see native paths as paths of the tenant's tree; only the part
//!   that touches storage goes to the host (`ops.rs`) instead of the backend;
//! - inode numbers of native nodes carry the `NATIVE` bit (below the control directory's), so
//!   they never collide with the tree's;
//! - nothing crosses between a native mount and the rest of the tree: a rename or hard link
//!   across the boundary is `EXDEV`, as between two local filesystems.
//!
//! Time-travel views show no native mounts: what a native directory held at a checkpoint was
//! never recorded.

mod files;
mod host;
mod ops;

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

use self::host::HostDir;
use super::{Engine, Volume};
use crate::error::{FsError, FsResult};
use crate::native::{self, NativeMode, NativeMount};
use crate::types::{Caller, Ino};

pub(super) use files::NativeOpen;

/// Native nodes: `NATIVE | mount << MOUNT_SHIFT | node`. The tree's inode numbers stay far below
/// 2^40, the control directory and checkpoint views use bits 63 and 62.
const NATIVE: u64 = 1 << 61;
const MOUNT_SHIFT: u32 = 40;
/// Mounts a volume can have in force.
const MAX_MOUNTS: usize = 1 << 20;
/// `readdir` offsets of mount points in the listing of the directory holding them: after every
/// entry of the tree, below the control directory's offset (`i64::MAX`).
const MOUNT_POINT_OFFSET: u64 = (i64::MAX as u64) - (1 << 21);

/// One native mount in force.
#[derive(Debug)]
pub(super) struct Mounted {
    /// Its path in the tenant's tree.
    path: String,
    /// Its name in the directory holding it.
    name: Vec<u8>,
    /// The directory of the tree holding it; 0 until attached.
    parent: AtomicU64,
    mode: NativeMode,
    /// The host directory, placeholders replaced.
    source: String,
    host: HostDir,
}

/// The native mounts of a volume.
#[derive(Debug)]
pub(super) struct NativeMounts {
    mounts: Vec<Mounted>,
    /// The whole volume refuses changes.
    read_only: bool,
}

impl NativeMounts {
    /// Open the source directory of each definition, for tenant `tenant` (placeholders
    /// replaced). A missing per-tenant source of a `rw` mount is created; any other missing or
    /// unusable source fails the whole volume, with a message that names the mount.
    pub(super) fn open(
        definitions: &[NativeMount],
        tenant: &str,
        tenant_id: crate::types::TenantId,
        read_only: bool,
    ) -> FsResult<NativeMounts> {
        if definitions.len() > MAX_MOUNTS {
            return Err(FsError::BadInput(format!(
                "{} native mounts: at most {MAX_MOUNTS}",
                definitions.len()
            )));
        }
        let mut mounts = Vec::with_capacity(definitions.len());
        for def in definitions {
            let source = def.source_for(tenant, tenant_id);
            let unusable = |why: String| {
                FsError::BadInput(format!(
                    "native mount {:?}: source {source:?} {why}",
                    def.path
                ))
            };
            let per_tenant = def.source_is_per_tenant();
            let create = def.mode == NativeMode::Rw && per_tenant;
            let host = HostDir::open(&source, create).map_err(|e| unusable(e.to_string()))?;
            if per_tenant {
                host.claim(&format!("tenant id {}", tenant_id.0))
                    .map_err(|e| unusable(e.to_string()))?;
            }
            let name = native::components(&def.path)
                .last()
                .unwrap_or_default()
                .to_vec();
            mounts.push(Mounted {
                path: def.path.clone(),
                name,
                parent: AtomicU64::new(0),
                mode: def.mode,
                source,
                host,
            });
        }
        Ok(NativeMounts { mounts, read_only })
    }

    /// The mount and node of a native inode number.
    fn node(&self, ino: Ino) -> Option<(usize, &Mounted, u64)> {
        if ino.0 & NATIVE == 0 || ino.0 >= NATIVE << 1 {
            return None;
        }
        let index = ((ino.0 & !NATIVE) >> MOUNT_SHIFT) as usize;
        let node = ino.0 & ((1 << MOUNT_SHIFT) - 1);
        self.mounts.get(index).map(|m| (index, m, node))
    }

    /// The mount whose mount point is `name` in the tree's directory `parent`.
    fn mount_point(&self, parent: Ino, name: &[u8]) -> Option<(usize, &Mounted)> {
        self.mounts
            .iter()
            .enumerate()
            .find(|(_, m)| m.parent.load(Ordering::Acquire) == parent.0 && m.name == name)
    }

    /// Whether `ino` is a native node.
    pub(super) fn owns(&self, ino: Ino) -> bool {
        self.node(ino).is_some()
    }

    /// Whether `ino` is a native node or `name` in `ino` a mount point: the operation is ours.
    pub(super) fn owns_child(&self, parent: Ino, name: &[u8]) -> bool {
        self.owns(parent) || self.mount_point(parent, name).is_some()
    }

    /// Whether the tree's directory `dir` holds a mount point.
    pub(super) fn holds_mount_points(&self, dir: Ino) -> bool {
        self.mounts
            .iter()
            .any(|m| m.parent.load(Ordering::Acquire) == dir.0)
    }

    /// The name of a native inode in its parent (for paths in audit events and the access
    /// policy): a node's latest name, a mount root's mount point.
    pub(super) fn name_of(&self, ino: Ino) -> Option<(Ino, std::sync::Arc<[u8]>)> {
        let (index, mount, node) = self.node(ino)?;
        if node == host::ROOT_NODE {
            let parent = mount.parent.load(Ordering::Acquire);
            return (parent != 0).then(|| (Ino(parent), std::sync::Arc::from(&mount.name[..])));
        }
        let (parent, name) = mount.host.first_name(node)?;
        Some((native_ino(index, parent), name))
    }

    /// Mount points held by `dir` after listing offset `offset`, as listing entries.
    pub(super) fn mount_point_entries(&self, dir: Ino, offset: u64) -> Vec<crate::types::DirEntry> {
        self.mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| m.parent.load(Ordering::Acquire) == dir.0)
            .map(|(i, m)| crate::types::DirEntry {
                name: m.name.clone(),
                ino: native_ino(i, host::ROOT_NODE),
                kind: crate::types::FileType::Directory,
                next_offset: MOUNT_POINT_OFFSET + i as u64 + 1,
            })
            .filter(|e| e.next_offset > offset)
            .collect()
    }

    /// Whether a listing entry of the tree's directory `dir` is hidden by a mount point.
    pub(super) fn hides(&self, dir: Ino, name: &[u8]) -> bool {
        self.mount_point(dir, name).is_some()
    }
}

fn native_ino(mount: usize, node: u64) -> Ino {
    Ino(NATIVE | (mount as u64) << MOUNT_SHIFT | node)
}

impl Volume {
    /// The volume's native mounts, if it has any.
    pub(super) fn native(&self) -> Option<&NativeMounts> {
        self.inner.native.as_ref()
    }

    /// Whether `ino` is a node of a native mount.
    pub(super) fn is_native(&self, ino: Ino) -> bool {
        self.native().is_some_and(|n| n.owns(ino))
    }

    /// Whether `name` in `parent` is in a native mount, or is a mount point.
    pub(super) fn is_native_child(&self, parent: Ino, name: &[u8]) -> bool {
        self.native().is_some_and(|n| n.owns_child(parent, name))
    }

    /// Whether `fh` is open on a native node.
    pub(super) fn is_native_handle(&self, fh: crate::types::FileHandle) -> bool {
        self.native().is_some() && matches!(self.handle(fh), Ok(super::Handle::Native { .. }))
    }

    /// `EBUSY` if `name` in the tree's directory `parent` holds a mount point (a directory
    /// holding a mount cannot be removed, as on a local filesystem).
    pub(super) async fn refuse_removing_mount_points(
        &self,
        parent: Ino,
        name: &[u8],
    ) -> FsResult<()> {
        let Some(native) = self.native() else {
            return Ok(());
        };
        if let Ok(Some(entry)) = self.reader().lookup(parent, name).await {
            if native.holds_mount_points(entry.ino) {
                return Err(FsError::Busy("a directory holding a native mount"));
            }
        }
        Ok(())
    }

    /// Hang each mount below the directory of the tree holding its path, creating missing
    /// directories (owned by root, mode 0755) on a writable volume. A mount whose directory the
    /// tree cannot hold (a file is in the way, or a read-only tree lacks it) is left out with a
    /// warning: the tenant's own files never keep its volume from opening.
    pub(super) async fn attach_native_mounts(&self) -> FsResult<()> {
        let Some(native) = self.native() else {
            return Ok(());
        };
        let root = Caller::root();
        'mounts: for mount in &native.mounts {
            let parts: Vec<&[u8]> = native::components(&mount.path).collect();
            let mut dir = Ino::ROOT;
            for part in &parts[..parts.len() - 1] {
                let why = match self.do_lookup(&root, dir, part).await {
                    Ok(attr) if attr.kind == crate::types::FileType::Directory => {
                        dir = attr.ino;
                        continue;
                    }
                    Ok(_) => "a file of the tree is in its way",
                    Err(FsError::NotFound) if !self.inner.read_only => {
                        dir = match self.do_mkdir(&root, dir, part, 0o755).await {
                            Ok(attr) => attr.ino,
                            // Another mount of the tenant made it meanwhile.
                            Err(FsError::Exists) => self.do_lookup(&root, dir, part).await?.ino,
                            Err(e) => return Err(e),
                        };
                        continue;
                    }
                    Err(FsError::NotFound) => "its directory is not in the read-only tree",
                    Err(e) => return Err(e),
                };
                warn!(path = %mount.path, "native mount left out: {why}");
                continue 'mounts;
            }
            mount.parent.store(dir.0, Ordering::Release);
            info!(path = %mount.path, source = %mount.source, mode = %mount.mode, "native mount in force");
        }
        Ok(())
    }
}

impl Engine {
    /// The native mounts of `tenant` (its own, and the shared ones), or with `None` only the
    /// shared ones.
    pub async fn native_mounts(&self, tenant: Option<&str>) -> FsResult<Vec<NativeMount>> {
        let mut out = self.shared_native_mounts().await?;
        if let Some(tenant) = tenant {
            out.extend(self.own_native_mounts(tenant).await?);
        }
        Ok(out)
    }

    async fn shared_native_mounts(&self) -> FsResult<Vec<NativeMount>> {
        let text = self.shared.backend.shared_native_mounts().await?;
        let mut mounts = parse_stored(text.as_deref(), "the shared native mounts")?;
        for m in &mut mounts {
            m.shared = true;
        }
        Ok(mounts)
    }

    async fn own_native_mounts(&self, tenant: &str) -> FsResult<Vec<NativeMount>> {
        let record = self.active_tenant(tenant).await?;
        let mut mounts = parse_stored(
            record.native_mounts.as_deref(),
            &format!("the native mounts of {tenant}"),
        )?;
        for m in &mut mounts {
            m.shared = false;
        }
        Ok(mounts)
    }

    /// Add native mounts: each to the shared definitions if it says `shared`, else to
    /// `tenant`'s own (which must then be given). A definition at a path already defined in the
    /// same place replaces it; any other overlap with the definitions in force is refused.
    pub async fn add_native_mounts(
        &self,
        tenant: Option<&str>,
        added: &[NativeMount],
    ) -> FsResult<()> {
        native::check_all(added).map_err(|e| FsError::BadInput(e.to_string()))?;
        if added.iter().any(|m| !m.shared) && tenant.is_none() {
            return Err(FsError::BadInput(
                "a native mount that is not shared needs a tenant".into(),
            ));
        }
        let mut shared = self.shared_native_mounts().await?;
        let mut own = match tenant {
            Some(t) => self.own_native_mounts(t).await?,
            None => Vec::new(),
        };
        for m in added {
            let list = if m.shared { &mut shared } else { &mut own };
            list.retain(|old| old.path != m.path);
            list.push(m.clone());
        }
        let all: Vec<NativeMount> = shared.iter().chain(&own).cloned().collect();
        native::check_all(&all).map_err(|e| FsError::BadInput(e.to_string()))?;
        let shared_changed = added.iter().any(|m| m.shared);
        let own_changed = added.iter().any(|m| !m.shared);
        self.store_native_mounts(
            shared_changed.then_some(&shared[..]),
            tenant.filter(|_| own_changed).map(|t| (t, &own[..])),
        )
        .await
    }

    /// Remove the native mount at `path` from the shared definitions (`shared`) or from
    /// `tenant`'s own. `ENOENT` if there is none.
    pub async fn remove_native_mount(
        &self,
        tenant: Option<&str>,
        path: &str,
        shared: bool,
    ) -> FsResult<()> {
        let mut shared_list = self.shared_native_mounts().await?;
        let mut own = match tenant {
            Some(t) => self.own_native_mounts(t).await?,
            None if shared => Vec::new(),
            None => {
                return Err(FsError::BadInput(
                    "removing a tenant's native mount needs the tenant".into(),
                ));
            }
        };
        let list = if shared { &mut shared_list } else { &mut own };
        let before = list.len();
        list.retain(|m| m.path != path);
        if list.len() == before {
            return Err(FsError::NotFound);
        }
        match (shared, tenant) {
            (true, _) => self.store_native_mounts(Some(&shared_list), None).await,
            (false, Some(t)) => self.store_native_mounts(None, Some((t, &own))).await,
            (false, None) => Ok(()),
        }
    }

    /// Remove every native mount of `tenant`'s own (when its volume is deleted, say); the
    /// shared ones stay.
    pub async fn clear_native_mounts(&self, tenant: &str) -> FsResult<()> {
        let record = self.active_tenant(tenant).await?;
        self.shared
            .backend
            .set_native_mounts(Some(record.id), None)
            .await?;
        Ok(())
    }

    /// Store the lists that changed: the shared one, a tenant's own.
    async fn store_native_mounts(
        &self,
        shared: Option<&[NativeMount]>,
        own: Option<(&str, &[NativeMount])>,
    ) -> FsResult<()> {
        let text = |list: &[NativeMount]| (!list.is_empty()).then(|| native::to_toml(list));
        if let Some(shared) = shared {
            self.shared
                .backend
                .set_native_mounts(None, text(shared).as_deref())
                .await?;
        }
        if let Some((tenant, own)) = own {
            let record = self.active_tenant(tenant).await?;
            self.shared
                .backend
                .set_native_mounts(Some(record.id), text(own).as_deref())
                .await?;
        }
        Ok(())
    }

    /// The definitions a volume of `record` puts in force: shared, own, then `extra` (a mount's
    /// own flags), checked together.
    pub(super) async fn native_mounts_for(
        &self,
        record: &crate::backend::TenantRecord,
        extra: &[NativeMount],
    ) -> FsResult<Vec<NativeMount>> {
        let mut all = self.shared_native_mounts().await?;
        all.extend(parse_stored(
            record.native_mounts.as_deref(),
            &format!("the native mounts of {}", record.name),
        )?);
        all.extend(extra.iter().cloned());
        native::check_all(&all).map_err(|e| FsError::BadInput(e.to_string()))?;
        Ok(all)
    }
}

fn parse_stored(text: Option<&str>, what: &str) -> FsResult<Vec<NativeMount>> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => {
            native::parse(text).map_err(|e| FsError::BadInput(format!("{what} are invalid: {e}")))
        }
    }
}
