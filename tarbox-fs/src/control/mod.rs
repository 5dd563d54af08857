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
//! ```
//!
//! [`ControlFs`] has the same operations as [`Volume`] and routes each by inode number (see
//! `nodes`): the tree's own inodes go to the volume unchanged, the control nodes are answered
//! here, and snapshot inodes go to a read-only volume pinned to the checkpoint. Nothing of
//! `/.tarbox` is stored, counted in quota or captured by a checkpoint, and the engine refuses to
//! create a real `/.tarbox` (`EPERM`), so the virtual directory never hides data.

mod files;
mod nodes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use self::nodes::{MAX_SLOTS, Node, Target, decode, snapshot_ino};
use crate::engine::{CONTROL_DIR, Volume, perm_allows};
use crate::error::{FsError, FsResult};
use crate::types::{
    Caller, DirEntry, FallocateMode, FileAttr, FileHandle, FileType, Ino, Inode, LayerId,
    RenameFlags, SetAttr, StatFs, Timestamp, XattrMode,
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

/// A [`Volume`] with the `/.tarbox` control directory at its root. Cheap to clone.
#[derive(Clone)]
pub struct ControlFs {
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
        ControlFs {
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

    /// The tenant's tree, without the control directory.
    pub fn volume(&self) -> &Volume {
        &self.volume
    }

    /// Changes whenever a control command (a switch or a drop) replaced the tree under the mount:
    /// a frontend that lets the kernel cache entries and attributes must drop those caches then.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `fh` is a control file, whose content is generated: frontends should bypass the
    /// page cache for it (direct I/O), since its size changes without writes.
    pub fn is_generated(&self, fh: FileHandle) -> bool {
        matches!(self.handle(fh), Ok(ControlHandle::File { .. }))
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
        let volume = self.volume.pinned(layer).await?;
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

    /// Attributes of a fixed control node: owned by the root directory's owner; command files are
    /// writable by whoever may write the root (and not at all on a read-only volume).
    async fn control_attr(&self, caller: &Caller, node: Node) -> FsResult<FileAttr> {
        let root = self.volume.getattr(caller, Ino::ROOT).await?;
        let now = Timestamp::from_system(std::time::SystemTime::now());
        let (kind, perm, size, nlink) = if node.is_dir() {
            let subdirs = node.children().filter(|n| n.is_dir()).count() as u32;
            (FileType::Directory, 0o555, 0, 2 + subdirs)
        } else {
            // Command files read as their usage help.
            let size = self.content(node).await?.len() as u64;
            let writable = node.is_command() && !self.volume.is_read_only();
            let perm = if writable {
                root.perm & 0o666 | 0o600
            } else {
                0o444
            };
            (FileType::Regular, perm, size, 1)
        };
        Ok(FileAttr {
            ino: node.ino(),
            kind,
            perm,
            nlink,
            uid: root.uid,
            gid: root.gid,
            size,
            blocks: size.div_ceil(512),
            blksize: 4096,
            atime: now,
            mtime: now,
            ctime: now,
            btime: root.btime,
            rdev: 0,
        })
    }

    /// Attributes of a snapshot's inode, numbered for this mount.
    fn snapshot_attr(slot: u32, mut attr: FileAttr) -> FsResult<FileAttr> {
        attr.ino = snapshot_ino(slot, attr.ino)?;
        Ok(attr)
    }

    /// The attributes of what `ino` refers to.
    pub async fn getattr(&self, caller: &Caller, ino: Ino) -> FsResult<FileAttr> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.getattr(caller, ino).await,
            Target::Control(node) => self.control_attr(caller, node).await,
            Target::Snapshot { slot, ino } => {
                let attr = self.slot_volume(slot)?.getattr(caller, ino).await?;
                Self::snapshot_attr(slot, attr)
            }
        }
    }

    pub async fn lookup(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<FileAttr> {
        match self.decode(parent)? {
            Target::Tree(Ino::ROOT) if name == CONTROL_DIR && self.enabled => {
                self.control_attr(caller, Node::Root).await
            }
            Target::Tree(p) => self.volume.lookup(caller, p, name).await,
            Target::Control(Node::Snapshots) => {
                let tree = self.volume.layers().await?;
                let text = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
                let layer = tree.find(text).ok_or(FsError::NotFound)?;
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

    pub async fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        let p = self.tree_parent(parent, name, FsError::Exists)?;
        self.volume.mknod(caller, p, name, mode, rdev).await
    }

    pub async fn mkdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<FileAttr> {
        let p = self.tree_parent(parent, name, FsError::Exists)?;
        self.volume.mkdir(caller, p, name, mode).await
    }

    pub async fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<FileAttr> {
        let p = self.tree_parent(parent, name, FsError::Exists)?;
        self.volume.symlink(caller, p, name, target).await
    }

    pub async fn readlink(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.readlink(caller, ino).await,
            Target::Control(_) => Err(FsError::Invalid("not a symlink")),
            Target::Snapshot { slot, ino } => self.slot_volume(slot)?.readlink(caller, ino).await,
        }
    }

    pub async fn unlink(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        let p = self.tree_parent(parent, name, FsError::IsDir)?;
        self.volume.unlink(caller, p, name).await
    }

    pub async fn rmdir(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<()> {
        let p = self.tree_parent(parent, name, FsError::Busy("the control directory"))?;
        self.volume.rmdir(caller, p, name).await
    }

    pub async fn link(
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
        self.volume.link(caller, ino, p, newname).await
    }

    pub async fn rename(
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

    pub async fn setattr(&self, caller: &Caller, ino: Ino, set: &SetAttr) -> FsResult<FileAttr> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.setattr(caller, ino, set).await,
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

    pub async fn access(&self, caller: &Caller, ino: Ino, mask: u32) -> FsResult<()> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.access(caller, ino, mask).await,
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

    pub async fn statfs(&self, caller: &Caller) -> FsResult<StatFs> {
        self.volume.statfs(caller).await
    }

    pub async fn open(&self, caller: &Caller, ino: Ino, flags: i32) -> FsResult<FileHandle> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.open(caller, ino, flags).await,
            Target::Control(node) if node.is_dir() => Err(FsError::IsDir),
            Target::Control(node) => {
                let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
                if writing {
                    if !node.is_command() {
                        return Err(FsError::PermissionDenied);
                    }
                    if self.volume.is_read_only() {
                        return Err(FsError::ReadOnly);
                    }
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

    pub async fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, FileHandle)> {
        match self.decode(parent)? {
            Target::Tree(Ino::ROOT) if name == CONTROL_DIR && self.enabled => Err(FsError::IsDir),
            Target::Tree(p) => self.volume.create(caller, p, name, mode, flags).await,
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

    pub async fn read(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        if !Self::is_control_fh(fh) {
            return self.volume.read(caller, fh, offset, size).await;
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
    pub async fn write(
        &self,
        caller: &Caller,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u32> {
        if !Self::is_control_fh(fh) {
            return self.volume.write(caller, fh, offset, data).await;
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

    pub async fn flush(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.volume.flush(caller, fh).await;
        }
        match self.handle(fh)? {
            ControlHandle::Snapshot { slot, fh } => self.slot_volume(slot)?.flush(caller, fh).await,
            _ => Ok(()),
        }
    }

    pub async fn fsync(&self, caller: &Caller, fh: FileHandle, datasync: bool) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.volume.fsync(caller, fh, datasync).await;
        }
        self.handle(fh).map(|_| ())
    }

    pub async fn release(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.volume.release(caller, fh).await;
        }
        match self.take_handle(fh)? {
            ControlHandle::Snapshot { slot, fh } => {
                self.slot_volume(slot)?.release(caller, fh).await
            }
            _ => Ok(()),
        }
    }

    pub async fn fallocate(
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

    pub async fn opendir(&self, caller: &Caller, ino: Ino) -> FsResult<FileHandle> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.opendir(caller, ino).await,
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
    pub async fn readdir(
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
            let mut entries = self.volume.readdir(caller, fh, offset).await?;
            if entries.is_empty() && ino == Ino::ROOT && self.enabled {
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
                self.control_entries(node, offset).await
            }
            ControlHandle::Snapshot { slot, fh } => {
                let mut entries = self.slot_volume(slot)?.readdir(caller, fh, offset).await?;
                for e in &mut entries {
                    e.ino = snapshot_ino(slot, e.ino)?;
                }
                Ok(entries)
            }
            ControlHandle::File { .. } => Err(FsError::NotDir),
        }
    }

    /// Entries of a control directory after `offset`: `.`, `..`, then the children (for
    /// `snapshots`, one per checkpoint, by name).
    async fn control_entries(&self, node: Node, offset: u64) -> FsResult<Vec<DirEntry>> {
        let parent = node.parent().map_or(Ino::ROOT, Node::ino);
        let mut all = vec![
            (b".".to_vec(), node.ino(), FileType::Directory),
            (b"..".to_vec(), parent, FileType::Directory),
        ];
        if node == Node::Snapshots {
            let tree = self.volume.layers().await?;
            for layer in &tree.layers {
                if let Some(name) = &layer.name {
                    let slot = self.slot_of(layer.id).await?;
                    all.push((
                        name.as_bytes().to_vec(),
                        snapshot_ino(slot, Ino::ROOT)?,
                        FileType::Directory,
                    ));
                }
            }
        } else {
            for child in node.children() {
                let kind = if child.is_dir() {
                    FileType::Directory
                } else {
                    FileType::Regular
                };
                all.push((child.name().to_vec(), child.ino(), kind));
            }
        }
        Ok(all
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (name, ino, kind))| DirEntry {
                name,
                ino,
                kind,
                next_offset: i as u64 + 1,
            })
            .collect())
    }

    /// [`ControlFs::readdir`] with each entry's attributes.
    pub async fn readdirplus(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
    ) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        if !Self::is_control_fh(fh) && offset < CONTROL_ENTRY_OFFSET {
            let mut entries = self.volume.readdirplus(caller, fh, offset).await?;
            if entries.is_empty() && ino == Ino::ROOT && self.enabled {
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

    pub async fn releasedir(&self, caller: &Caller, fh: FileHandle) -> FsResult<()> {
        if !Self::is_control_fh(fh) {
            return self.volume.releasedir(caller, fh).await;
        }
        match self.take_handle(fh)? {
            ControlHandle::Snapshot { slot, fh } => {
                self.slot_volume(slot)?.releasedir(caller, fh).await
            }
            _ => Ok(()),
        }
    }

    pub async fn getxattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.getxattr(caller, ino, name).await,
            Target::Control(_) => Err(FsError::NoData),
            Target::Snapshot { slot, ino } => {
                self.slot_volume(slot)?.getxattr(caller, ino, name).await
            }
        }
    }

    pub async fn listxattr(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.listxattr(caller, ino).await,
            Target::Control(_) => Ok(Vec::new()),
            Target::Snapshot { slot, ino } => self.slot_volume(slot)?.listxattr(caller, ino).await,
        }
    }

    pub async fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.setxattr(caller, ino, name, value, mode).await,
            Target::Control(_) => Err(FsError::NotPermitted),
            Target::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }

    pub async fn removexattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> FsResult<()> {
        match self.decode(ino)? {
            Target::Tree(ino) => self.volume.removexattr(caller, ino, name).await,
            Target::Control(_) => Err(FsError::NotPermitted),
            Target::Snapshot { .. } => Err(FsError::ReadOnly),
        }
    }

    /// Flush the buffered writes of every open file of the tree.
    pub async fn flush_all(&self) -> FsResult<()> {
        self.volume.flush_all().await
    }
}

/// The permission-relevant part of synthesized attributes.
fn as_inode(attr: &FileAttr) -> Inode {
    Inode {
        ino: attr.ino,
        kind: attr.kind,
        perm: attr.perm,
        uid: attr.uid,
        gid: attr.gid,
        nlink: attr.nlink,
        size: attr.size,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        btime: attr.btime,
        rdev: attr.rdev,
        parent: Ino::ROOT,
        target: Vec::new(),
    }
}
