//! A volume as a mount presents it: the tenant's tree plus the virtual `/.tarbox` directory.
//!
//! ```text
//! /.tarbox/
//!   layers/current   JSON of the current layer          layers/new     write a name: checkpoint
//!   layers/list      JSON of every layer                layers/switch  write a name or id: rollback
//!   layers/tree      the layer tree, current marked     layers/drop    write a name or id (or JSON
//!   layers/diff      changes since the last checkpoint                 with "force"): drop
//!   snapshots/<checkpoint>/…   the read-only tree of every checkpoint
//!   stats/usage      JSON: bytes, inodes, quota, percentages, layers
//!   last_error       why the last rejected command failed
//!   policy           the tenant's access policy (TOML), read-only
//! ```
//!
//! [`ControlFs`] is a [`Filesystem`] wrapping an inner one and routes each request by inode number
//! (see `nodes`): the tree's own inodes go to the inner filesystem unchanged, the control nodes
//! are answered here from the volume's [`Layers`] and audit trail, and snapshot inodes go to a
//! read-only volume pinned to the checkpoint. Nothing of
//! `/.tarbox` is stored, counted in quota or captured by a checkpoint, and the engine refuses to
//! create a real `/.tarbox` (`EPERM`), so the virtual directory never hides data.

mod entries;
mod files;
mod nodes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use self::entries::as_inode;
use self::nodes::{MAX_SLOTS, Node, Target, decode, snapshot_ino};
use crate::engine::{CONTROL_DIR, LayerRef, Layers, Volume, perm_allows};
use crate::error::{FsError, FsResult};
use crate::filesystem::Filesystem;
use crate::policy::Need;
use crate::types::{
    Caller, DirEntry, FallocateMode, FileAttr, FileHandle, FileType, Ino, LayerId, RenameFlags,
    SetAttr, StatFs, Whence, XattrMode,
};

/// Handles of control files and snapshot trees carry this bit; the volume's own handles never do.
const CONTROL_FH: u64 = 1 << 63;
/// `readdir` offset of `/.tarbox` in the root listing: after every entry of the tree.
const CONTROL_ENTRY_OFFSET: u64 = i64::MAX as u64;

/// A handle opened through the control directory.
#[derive(Clone)]
enum ControlHandle {
    /// A control file: the content it had when opened.
    File { node: Node, content: Arc<Vec<u8>> },
    /// A control directory.
    Dir,
    /// A handle of a snapshot's volume.
    Snapshot { slot: u32, fh: FileHandle },
}

#[derive(Default)]
struct State {
    handles: HashMap<u64, ControlHandle>,
    next_handle: u64,
    /// Checkpoint views opened so far, by slot; slots are never reused within a mount.
    slots: Vec<(LayerId, Volume)>,
    by_layer: HashMap<LayerId, u32>,
    last_error: String,
}

/// A filesystem with the `/.tarbox` control directory of a [`Volume`] at its root. Cheap to
/// clone.
#[derive(Clone)]
pub struct ControlFs {
    /// Where requests for the tree go.
    inner: Arc<dyn Filesystem>,
    /// The volume whose history and audit trail the control files show and change.
    volume: Volume,
    state: Arc<Mutex<State>>,
    /// Bumped whenever a command changed which tree the mount shows.
    generation: Arc<AtomicU64>,
    /// Whether `/.tarbox` is shown at all.
    enabled: bool,
}

impl std::fmt::Debug for ControlFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlFs")
            .field("volume", &self.volume)
            .finish()
    }
}

impl ControlFs {
    /// The volume with its control directory.
    pub fn new(volume: Volume) -> ControlFs {
        ControlFs::with_control_dir(volume, true)
    }

    /// The volume with (`enabled`) or without its control directory; without it, every request
    /// goes straight to the volume.
    pub fn with_control_dir(volume: Volume, enabled: bool) -> ControlFs {
        ControlFs::wrapping(Arc::new(volume.clone()), volume, enabled)
    }

    /// `inner` (the tree of `volume`, possibly behind guards) with `volume`'s control directory.
    pub fn wrapping(inner: Arc<dyn Filesystem>, volume: Volume, enabled: bool) -> ControlFs {
        ControlFs {
            inner,
            volume,
            state: Arc::new(Mutex::new(State::default())),
            generation: Arc::new(AtomicU64::new(0)),
            enabled,
        }
    }

    fn decode(&self, ino: Ino) -> FsResult<Target> {
        if self.enabled {
            decode(ino)
        } else {
            Ok(Target::Tree(ino))
        }
    }

    /// The history the control files administer, acting for `caller`.
    fn layers(&self, caller: &Caller) -> Layers {
        self.volume.layers().acting_as(caller.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn layers_changed(&self) {
        let mut st = self.state();
        // Views of dropped layers would read nothing: open them afresh next time. Slots already
        // handed out stay valid numbers (never reused), so kernel caches cannot mix trees up.
        st.by_layer.clear();
        drop(st);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn last_error(&self) -> String {
        self.state().last_error.clone()
    }

    fn set_last_error(&self, text: String) {
        self.state().last_error = text;
    }

    fn new_handle(&self, handle: ControlHandle) -> FileHandle {
        let mut st = self.state();
        st.next_handle += 1;
        let id = CONTROL_FH | st.next_handle;
        st.handles.insert(id, handle);
        FileHandle(id)
    }

    fn handle(&self, fh: FileHandle) -> FsResult<ControlHandle> {
        self.state()
            .handles
            .get(&fh.0)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn take_handle(&self, fh: FileHandle) -> FsResult<ControlHandle> {
        self.state().handles.remove(&fh.0).ok_or(FsError::BadHandle)
    }

    fn is_control_fh(fh: FileHandle) -> bool {
        fh.0 & CONTROL_FH != 0
    }

    /// The volume showing the checkpoint in `slot`.
    fn slot_volume(&self, slot: u32) -> FsResult<Volume> {
        self.state()
            .slots
            .get(slot as usize)
            .map(|(_, v)| v.clone())
            .ok_or(FsError::NotFound)
    }

    /// The slot of the checkpoint `layer`, opening a view of it on first use.
    async fn slot_of(&self, layer: LayerId) -> FsResult<u32> {
        if let Some(slot) = self.state().by_layer.get(&layer) {
            return Ok(*slot);
        }
        let volume = self.volume.layers().view(&LayerRef::Id(layer)).await?;
        let mut st = self.state();
        if let Some(slot) = st.by_layer.get(&layer) {
            return Ok(*slot);
        }
        let slot = u32::try_from(st.slots.len())
            .ok()
            .filter(|s| *s < MAX_SLOTS)
            .ok_or(FsError::Busy("too many snapshots opened by this mount"))?;
        st.slots.push((layer, volume));
        st.by_layer.insert(layer, slot);
        Ok(slot)
    }

    /// Whether the root's listing shows `/.tarbox` to `caller`.
    fn shows_control_dir(&self, caller: &Caller) -> bool {
        self.enabled
            && self
                .volume
                .admit_path(caller, Node::Root.path(), Need::Read)
                .is_ok()
    }

    /// Where a name operation on `(parent, name)` goes: the tree (`Some(parent)`), or an error for
    /// `/.tarbox` itself and everything inside the control directory.
    fn tree_parent(&self, parent: Ino, name: &[u8], exists: FsError) -> FsResult<Ino> {
        match self.decode(parent)? {
            Target::Tree(Ino::ROOT) if name == CONTROL_DIR && self.enabled => Err(exists),
            Target::Tree(p) => Ok(p),
            Target::Control(_) => Err(FsError::NotPermitted),
            Target::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }
}

#[async_trait]
impl Filesystem for ControlFs {
    /// The attributes of what `ino` refers to.
    async fn getattr(&self, caller: &Caller, ino: Ino) -> FsResult<FileAttr> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.getattr(caller, ino).await,
            Target::Control(node) => self.control_attr(caller, node).await,
            Target::Snapshot { slot, ino } => {
                let attr = self.slot_volume(slot)?.getattr(caller, ino).await?;
                Self::snapshot_attr(slot, attr)
            }
        }
    }

    async fn lookup(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<FileAttr> {
        match self.decode(parent)? {
            Target::Tree(Ino::ROOT) if name == CONTROL_DIR && self.enabled => {
                self.control_attr(caller, Node::Root).await
            }
            Target::Tree(p) => self.inner.lookup(caller, p, name).await,
            Target::Control(Node::Snapshots) => {
                let tree = self.volume.layers().tree().await?;
                let text = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
                let layer = tree
                    .find(&LayerRef::Name(text.to_owned()))
                    .ok_or(FsError::NotFound)?;
                let slot = self.slot_of(layer.id).await?;
                let attr = self.slot_volume(slot)?.getattr(caller, Ino::ROOT).await?;
                Self::snapshot_attr(slot, attr)
            }
            Target::Control(node) if node.is_dir() => match node.child(name) {
                Some(child) => self.control_attr(caller, child).await,
                None => Err(FsError::NotFound),
            },
            Target::Control(_) => Err(FsError::NotDir),
            Target::Snapshot { slot, ino } => {
                let attr = self.slot_volume(slot)?.lookup(caller, ino, name).await?;
                Self::snapshot_attr(slot, attr)
            }
        }
    }

    async fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        let p = self.tree_parent(parent, name, FsError::Exists)?;
        self.inner.mknod(caller, p, name, mode, rdev).await
    }

    async fn mkdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<FileAttr> {
        let p = self.tree_parent(parent, name, FsError::Exists)?;
        self.inner.mkdir(caller, p, name, mode).await
    }

    async fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<FileAttr> {
        let p = self.tree_parent(parent, name, FsError::Exists)?;
        self.inner.symlink(caller, p, name, target).await
    }

    async fn readlink(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.readlink(caller, ino).await,
            Target::Control(_) => Err(FsError::Invalid("not a symlink")),
            Target::Snapshot { slot, ino } => self.slot_volume(slot)?.readlink(caller, ino).await,
        }
    }

    async fn unlink(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        let p = self.tree_parent(parent, name, FsError::IsDir)?;
        self.inner.unlink(caller, p, name).await
    }

    async fn rmdir(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        let p = self.tree_parent(parent, name, FsError::Busy("the control directory"))?;
        self.inner.rmdir(caller, p, name).await
    }

    async fn link(
        &self,
        caller: &Caller,
        ino: Ino,
        newparent: Ino,
        newname: &[u8],
    ) -> FsResult<FileAttr> {
        let Target::Tree(ino) = self.decode(ino)? else {
            return Err(FsError::CrossDevice);
        };
        let p = self.tree_parent(newparent, newname, FsError::Exists)?;
        self.inner.link(caller, ino, p, newname).await
    }

    async fn rename(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        let busy = || FsError::Busy("the control directory");
        let (from, to) = (self.decode(parent)?, self.decode(newparent)?);
        match (from, to) {
            (Target::Tree(_), Target::Tree(_)) => {
                let p = self.tree_parent(parent, name, busy())?;
                let np = self.tree_parent(newparent, newname, busy())?;
                self.volume
                    .rename(caller, p, name, np, newname, flags)
                    .await
            }
            (Target::Snapshot { .. }, _) | (_, Target::Snapshot { .. }) => Err(FsError::ReadOnly),
            (Target::Control(_), Target::Control(_)) => Err(FsError::NotPermitted),
            _ => Err(FsError::CrossDevice),
        }
    }

    async fn setattr(&self, caller: &Caller, ino: Ino, set: &SetAttr) -> FsResult<FileAttr> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.setattr(caller, ino, set).await,
            Target::Control(node) => {
                // `echo x > file` truncates before writing: accept that for command files.
                let only_size = set.mode.is_none()
                    && set.uid.is_none()
                    && set.gid.is_none()
                    && set.atime.is_none()
                    && set.mtime.is_none()
                    && set.ctime.is_none();
                if node.is_command() && only_size {
                    let attr = self.control_attr(caller, node).await?;
                    if !perm_allows(caller, &as_inode(&attr), 2) {
                        return Err(FsError::PermissionDenied);
                    }
                    return Ok(attr);
                }
                Err(FsError::NotPermitted)
            }
            Target::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }

    async fn access(&self, caller: &Caller, ino: Ino, mask: u32) -> FsResult<()> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.access(caller, ino, mask).await,
            Target::Control(node) => {
                let attr = self.control_attr(caller, node).await?;
                if perm_allows(caller, &as_inode(&attr), (mask & 7) as u16) {
                    Ok(())
                } else {
                    Err(FsError::PermissionDenied)
                }
            }
            Target::Snapshot { slot, ino } => {
                self.slot_volume(slot)?.access(caller, ino, mask).await
            }
        }
    }

    async fn statfs(&self, caller: &Caller) -> FsResult<StatFs> {
        self.inner.statfs(caller).await
    }

    async fn open(&self, caller: &Caller, ino: Ino, flags: i32) -> FsResult<FileHandle> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.open(caller, ino, flags).await,
            Target::Control(node) if node.is_dir() => Err(FsError::IsDir),
            Target::Control(node) => {
                let caller = &self.volume.acting(caller);
                let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
                if writing {
                    if !node.is_command() {
                        return Err(FsError::PermissionDenied);
                    }
                    if self.inner.is_read_only() {
                        return Err(FsError::ReadOnly);
                    }
                    self.volume.admit_path(caller, node.path(), Need::Write)?;
                }
                let attr = self.control_attr(caller, node).await?;
                let mask = if writing { 2 } else { 4 };
                if !perm_allows(caller, &as_inode(&attr), mask) {
                    return Err(FsError::PermissionDenied);
                }
                let content = Arc::new(self.content(node).await?);
                Ok(self.new_handle(ControlHandle::File { node, content }))
            }
            Target::Snapshot { slot, ino } => {
                let fh = self.slot_volume(slot)?.open(caller, ino, flags).await?;
                Ok(self.new_handle(ControlHandle::Snapshot { slot, fh }))
            }
        }
    }

    async fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, FileHandle)> {
        match self.decode(parent)? {
            Target::Tree(Ino::ROOT) if name == CONTROL_DIR && self.enabled => Err(FsError::IsDir),
            Target::Tree(p) => self.inner.create(caller, p, name, mode, flags).await,
            Target::Control(dir) => match dir.child(name) {
                // `echo x > /.tarbox/layers/new` may arrive as a create of the existing file.
                Some(node) if flags & libc::O_EXCL == 0 => {
                    let fh = self.open(caller, node.ino(), flags).await?;
                    Ok((self.control_attr(caller, node).await?, fh))
                }
                Some(_) => Err(FsError::Exists),
                None => Err(FsError::NotPermitted),
            },
            Target::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }

    async fn read(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        if !Self::is_control_fh(fh) {
            return self.inner.read(caller, fh, offset, size).await;
        }
        match self.handle(fh)? {
            ControlHandle::File { content, .. } => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(content.len());
                let end = start.saturating_add(size as usize).min(content.len());
                Ok(Bytes::copy_from_slice(&content[start..end]))
            }
            ControlHandle::Dir => Err(FsError::IsDir),
            ControlHandle::Snapshot { slot, fh } => {
                self.slot_volume(slot)?.read(caller, fh, offset, size).await
            }
        }
    }

    /// A write to a command file runs the command it holds; a rejected command fails the write
    /// with its errno and leaves the reason in `/.tarbox/last_error`.
    async fn write(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        if !Self::is_control_fh(fh) {
            return self.inner.write(caller, fh, offset, data).await;
        }
        match self.handle(fh)? {
            ControlHandle::File { node, .. } if node.is_command() => {
                self.command(caller, node, data).await?;
                u32::try_from(data.len()).map_err(|_| FsError::Invalid("write too large"))
            }
            ControlHandle::File { .. } | ControlHandle::Dir => Err(FsError::BadHandle),
            ControlHandle::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }

    async fn flush(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.inner.flush(caller, fh).await;
        }
        match self.handle(fh)? {
            ControlHandle::Snapshot { slot, fh } => self.slot_volume(slot)?.flush(caller, fh).await,
            _ => Ok(()),
        }
    }

    async fn fsync(&self, caller: &Caller, fh: FileHandle, datasync: bool) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.inner.fsync(caller, fh, datasync).await;
        }
        self.handle(fh).map(|_| ())
    }

    async fn release(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.inner.release(caller, fh).await;
        }
        match self.take_handle(fh)? {
            ControlHandle::Snapshot { slot, fh } => {
                self.slot_volume(slot)?.release(caller, fh).await
            }
            _ => Ok(()),
        }
    }

    async fn fallocate(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: FallocateMode,
    ) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self
                .volume
                .fallocate(caller, fh, offset, length, mode)
                .await;
        }
        match self.handle(fh)? {
            ControlHandle::Snapshot { .. } => Err(FsError::ReadOnly),
            _ => Err(FsError::NotSupported("fallocate on a control file")),
        }
    }

    async fn lseek(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        whence: Whence,
    ) -> FsResult<u64> {
        if !Self::is_control_fh(fh) {
            return self.inner.lseek(caller, fh, offset, whence).await;
        }
        match self.handle(fh)? {
            // Generated content has no holes.
            ControlHandle::File { content, .. } => {
                let len = content.len() as u64;
                match whence {
                    _ if offset >= len => Err(FsError::PastEnd),
                    Whence::Data => Ok(offset),
                    Whence::Hole => Ok(len),
                }
            }
            ControlHandle::Dir => Err(FsError::IsDir),
            ControlHandle::Snapshot { slot, fh } => {
                self.slot_volume(slot)?
                    .lseek(caller, fh, offset, whence)
                    .await
            }
        }
    }

    async fn opendir(&self, caller: &Caller, ino: Ino) -> FsResult<FileHandle> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.opendir(caller, ino).await,
            Target::Control(node) if node.is_dir() => Ok(self.new_handle(ControlHandle::Dir)),
            Target::Control(_) => Err(FsError::NotDir),
            Target::Snapshot { slot, ino } => {
                let fh = self.slot_volume(slot)?.opendir(caller, ino).await?;
                Ok(self.new_handle(ControlHandle::Snapshot { slot, fh }))
            }
        }
    }

    /// The next entries after `offset` of the directory open as `fh` (`ino` is its inode, which
    /// tells the control directories apart).
    async fn readdir(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<DirEntry>> {
        if !Self::is_control_fh(fh) {
            if offset >= CONTROL_ENTRY_OFFSET {
                return Ok(Vec::new());
            }
            let mut entries = self.inner.readdir(caller, ino, fh, offset).await?;
            if entries.is_empty() && ino == Ino::ROOT && self.shows_control_dir(caller) {
                entries.push(DirEntry {
                    name: CONTROL_DIR.to_vec(),
                    ino: Node::Root.ino(),
                    kind: FileType::Directory,
                    next_offset: CONTROL_ENTRY_OFFSET,
                });
            }
            return Ok(entries);
        }
        match self.handle(fh)? {
            ControlHandle::Dir => {
                let Target::Control(node) = self.decode(ino)? else {
                    return Err(FsError::BadHandle);
                };
                let mut entries = self.control_entries(node, offset).await?;
                // Leave out the nodes the access policy keeps from the caller.
                entries.retain(|e| match decode(e.ino) {
                    Ok(Target::Control(child)) if e.name != b"." && e.name != b".." => self
                        .volume
                        .admit_path(caller, child.path(), Need::Read)
                        .is_ok(),
                    _ => true,
                });
                Ok(entries)
            }
            ControlHandle::Snapshot { slot, fh } => {
                let inner_ino = match self.decode(ino)? {
                    Target::Snapshot { ino, .. } => ino,
                    _ => return Err(FsError::BadHandle),
                };
                let mut entries = self
                    .slot_volume(slot)?
                    .readdir(caller, inner_ino, fh, offset)
                    .await?;
                for e in &mut entries {
                    e.ino = snapshot_ino(slot, e.ino)?;
                }
                Ok(entries)
            }
            ControlHandle::File { .. } => Err(FsError::NotDir),
        }
    }

    /// [`Filesystem::readdir`] with each entry's attributes.
    async fn readdirplus(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        if !Self::is_control_fh(fh) && offset < CONTROL_ENTRY_OFFSET {
            let mut entries = self.inner.readdirplus(caller, ino, fh, offset).await?;
            if entries.is_empty() && ino == Ino::ROOT && self.shows_control_dir(caller) {
                let attr = self.control_attr(caller, Node::Root).await?;
                entries.push((
                    DirEntry {
                        name: CONTROL_DIR.to_vec(),
                        ino: attr.ino,
                        kind: FileType::Directory,
                        next_offset: CONTROL_ENTRY_OFFSET,
                    },
                    attr,
                ));
            }
            return Ok(entries);
        }
        let entries = self.readdir(caller, ino, fh, offset).await?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if e.name == b"." || e.name == b".." {
                // The kernel does not look these up; their attributes are not needed.
                let attr = self.getattr(caller, e.ino).await?;
                out.push((e, attr));
                continue;
            }
            match self.getattr(caller, e.ino).await {
                Ok(attr) => out.push((e, attr)),
                Err(FsError::NotFound) => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    async fn releasedir(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.inner.releasedir(caller, fh).await;
        }
        match self.take_handle(fh)? {
            ControlHandle::Snapshot { slot, fh } => {
                self.slot_volume(slot)?.releasedir(caller, fh).await
            }
            _ => Ok(()),
        }
    }

    async fn getxattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.getxattr(caller, ino, name).await,
            Target::Control(_) => Err(FsError::NoData),
            Target::Snapshot { slot, ino } => {
                self.slot_volume(slot)?.getxattr(caller, ino, name).await
            }
        }
    }

    async fn listxattr(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.listxattr(caller, ino).await,
            Target::Control(_) => Ok(Vec::new()),
            Target::Snapshot { slot, ino } => self.slot_volume(slot)?.listxattr(caller, ino).await,
        }
    }

    async fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.setxattr(caller, ino, name, value, mode).await,
            Target::Control(_) => Err(FsError::NotPermitted),
            Target::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }

    async fn removexattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<()> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.inner.removexattr(caller, ino, name).await,
            Target::Control(_) => Err(FsError::NotPermitted),
            Target::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }

    async fn sync_all(&self) -> FsResult<()> {
        self.inner.sync_all().await
    }

    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }

    /// Control files are generated: frontends should bypass the page cache for them (direct
    /// I/O), since their size changes without writes.
    fn is_generated(&self, fh: FileHandle) -> bool {
        matches!(self.handle(fh), Ok(ControlHandle::File { .. }))
    }

    /// Changes whenever a control command (a switch or a drop) replaced the tree under the mount.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn invalidations(&self) -> Option<crate::filesystem::Invalidations> {
        self.inner.invalidations()
    }
}
