//! The host side of a native mount: the nodes of its source directory the kernel was told about,
//! how each is found again, and the identity host calls run under.
//!
//! **No escape.** A node is remembered by its names (`parent node`, `name`), never by an open
//! descriptor or a host path given by the tenant. To act on it the engine opens the path those
//! names spell with `openat2` *beneath* the source's root descriptor, refusing every symlink,
//! magic link and mount on the way (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`)
//! and `O_NOFOLLOW` at the end, then checks that the descriptor is the node it looked up (device
//! and inode number): `..`, absolute or relative symlinks, and a directory swapped for a symlink
//! between a check and its use all fail instead of reaching outside. Names come from the kernel
//! one component at a time and are refused if they could name anything but a child (`/`, `.`,
//! `..`). The source itself is opened one component at a time, none a symlink. A node without
//! a name (unlinked while open) is reached through a file open on it.
//!
//! **Whose rights.** A host call that the kernel checks permissions for runs with the caller's
//! effective uid, gid and supplementary groups (per thread), so the host's own rules — mode
//! bits, ACLs, the sticky bit, owner of new files, quotas, clearing set-user-ID on a write —
//! apply to the caller exactly as to a local process. The identity is switched back before the
//! thread does anything else; [`AsCaller`] cannot be held across an `.await`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, ResolveFlags, Stat, Uid, XattrFlags};

use crate::types::Caller;

/// The node of the source directory itself.
pub(super) const ROOT_NODE: u64 = 1;
/// Names remembered per node (hard links beyond this are found again by a new lookup).
const MAX_NAMES: usize = 8;
/// Deepest chain of names followed from a node to the root.
const MAX_DEPTH: usize = 4096;
/// `statfs` type of FUSE filesystems: a source on one could be a tenant's own tree.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// A node's identity on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct HostId {
    dev: u64,
    ino: u64,
}

impl HostId {
    #[allow(clippy::unnecessary_cast)] // Stat's field types differ between targets.
    pub(super) fn of(stat: &Stat) -> HostId {
        HostId {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }

    /// A directory entry's identity: its directory's device and its inode number.
    pub(super) fn from_parts(dev: u64, ino: u64) -> HostId {
        HostId { dev, ino }
    }
}

#[derive(Debug)]
struct Node {
    id: HostId,
    /// `(parent node, name)` of each name the node was seen under, most recent first.
    names: Vec<(u64, Arc<[u8]>)>,
    /// Files open on the node: how it is still reached once it has no name (unlinked while
    /// open, or renamed on the host).
    open: Vec<Weak<File>>,
}

#[derive(Debug, Default)]
struct Nodes {
    by_node: HashMap<u64, Node>,
    by_id: HashMap<HostId, u64>,
    by_name: HashMap<(u64, Arc<[u8]>), u64>,
    next: u64,
}

impl Nodes {
    /// Record that `node` is called `name` in `parent` (its most recent name).
    fn add_name(&mut self, node: u64, parent: u64, name: Arc<[u8]>) {
        if let Some(previous) = self.by_name.insert((parent, name.clone()), node) {
            if previous != node {
                self.drop_name(previous, parent, &name);
            }
        }
        if let Some(n) = self.by_node.get_mut(&node) {
            // Named again (a rename after its last name went): the object is this node still.
            self.by_id.insert(n.id, node);
            n.names.retain(|(p, m)| !(*p == parent && **m == *name));
            n.names.insert(0, (parent, name));
            if n.names.len() > MAX_NAMES {
                if let Some((p, m)) = n.names.pop() {
                    self.by_name.remove(&(p, m));
                }
            }
        }
    }

    /// Take `name` in `parent` off its node, keeping the node (it is about to get another name).
    fn detach_name(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let node = self.by_name.remove(&(parent, Arc::from(name)))?;
        if let Some(n) = self.by_node.get_mut(&node) {
            n.names.retain(|(p, m)| !(*p == parent && **m == *name));
        }
        Some(node)
    }

    /// `name` in `parent` names nothing any more.
    fn remove_name(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let key = (parent, Arc::from(name));
        let node = self.by_name.remove(&key)?;
        self.drop_name(node, parent, name);
        Some(node)
    }

    fn drop_name(&mut self, node: u64, parent: u64, name: &[u8]) {
        let Some(n) = self.by_node.get_mut(&node) else {
            return;
        };
        n.names.retain(|(p, m)| !(*p == parent && **m == *name));
        // A host object without names may be gone and its inode number reused: a new object
        // must not inherit its node (its kind could differ).
        if n.names.is_empty() && node != ROOT_NODE {
            let id = n.id;
            if self.by_id.get(&id) == Some(&node) {
                self.by_id.remove(&id);
            }
            // Gone for good unless a file is open on it (kept for its handles).
            n.open.retain(|f| f.strong_count() > 0);
            if n.open.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }
}

/// One source directory and the nodes of it handed out.
#[derive(Debug)]
pub(super) struct HostDir {
    /// `O_PATH` descriptor of the source directory: every path is resolved beneath it.
    root: OwnedFd,
    nodes: Mutex<Nodes>,
}

impl HostDir {
    /// Open a source directory (an absolute, normal path). With `create`, missing directories
    /// of it are made (root's, mode 0755), the last one world-writable with the sticky bit, as a
    /// volume's root (its tenant's programs, whoever they run as, write there). No component may
    /// be a symlink: a source inside a directory a tenant writes (another native mount's) could
    /// otherwise be swapped for a link to anywhere. Refused too if it is not a directory or lives
    /// on a FUSE filesystem (which a tenant could control, down to this very mount).
    pub(super) fn open(source: &str, create: bool) -> io::Result<HostDir> {
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut root = rustix::fs::open("/", dir_flags, Mode::empty())?;
        let parts: Vec<&str> = source.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let next = match rustix::fs::openat(&root, *part, dir_flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&root, *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let made = rustix::fs::openat(&root, *part, dir_flags, Mode::empty())?;
                    if i + 1 == parts.len() {
                        rustix::fs::chmod(
                            proc_path(&made).as_c_str(),
                            Mode::from_raw_mode(0o1777),
                        )?;
                    }
                    Ok(made)
                }
                other => other,
            };
            root = next.map_err(|e| match e {
                rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => io::Error::other(format!(
                    "passes through {part:?}, which is a symlink or not a directory"
                )),
                e => e.into(),
            })?;
        }
        let stat = rustix::fs::fstat(&root)?;
        let fs = rustix::fs::fstatfs(&root)?;
        #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 depending on the target.
        if fs.f_type as i64 == FUSE_SUPER_MAGIC {
            return Err(io::Error::other(
                "is on a FUSE filesystem (a user-space mount, which a tenant may control)",
            ));
        }
        let mut nodes = Nodes {
            next: ROOT_NODE + 1,
            ..Nodes::default()
        };
        let id = HostId::of(&stat);
        nodes.by_node.insert(
            ROOT_NODE,
            Node {
                id,
                names: Vec::new(),
                open: Vec::new(),
            },
        );
        nodes.by_id.insert(id, ROOT_NODE);
        Ok(HostDir {
            root,
            nodes: Mutex::new(nodes),
        })
    }

    /// Make sure a per-tenant source is this tenant's: a directory left by a deleted tenant of
    /// the same name (the engine never deletes host data) is refused, not handed to a newcomer.
    /// The owner is kept in a `trusted.` attribute, which no tenant can set or remove; on a
    /// filesystem without such attributes the check is skipped with a warning.
    pub(super) fn claim(&self, owner: &str) -> io::Result<()> {
        const OWNER: &str = "trusted.tarbox.owner";
        let path = proc_path(&self.root);
        let mut buf = [0u8; 64];
        match rustix::fs::getxattr(path.as_c_str(), OWNER, &mut buf[..]) {
            Ok(n) if &buf[..n] == owner.as_bytes() => Ok(()),
            Ok(n) => Err(io::Error::other(format!(
                "belongs to another tenant ({}), an earlier one of the same name: move it away \
                 to give the name's directory to this one",
                String::from_utf8_lossy(&buf[..n])
            ))),
            Err(rustix::io::Errno::NODATA) => {
                rustix::fs::setxattr(path.as_c_str(), OWNER, owner.as_bytes(), XattrFlags::CREATE)?;
                Ok(())
            }
            Err(rustix::io::Errno::OPNOTSUPP) => {
                tracing::warn!(
                    "a per-tenant native source's owner cannot be recorded: no trusted xattrs on its filesystem"
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node for a host object just seen as `name` in `parent`: the same node each time the
    /// same object is seen, under any of its names.
    pub(super) fn intern(&self, parent: u64, name: &[u8], id: HostId) -> u64 {
        let mut nodes = self.nodes();
        let node = match nodes.by_id.get(&id) {
            Some(&node) => node,
            None => {
                let node = nodes.next;
                nodes.next += 1;
                nodes.by_node.insert(
                    node,
                    Node {
                        id,
                        names: Vec::new(),
                        open: Vec::new(),
                    },
                );
                nodes.by_id.insert(id, node);
                node
            }
        };
        nodes.add_name(node, parent, Arc::from(name));
        node
    }

    /// The latest name of `node`: its parent node and its name there.
    pub(super) fn first_name(&self, node: u64) -> Option<(u64, Arc<[u8]>)> {
        self.nodes().by_node.get(&node)?.names.first().cloned()
    }

    /// `name` in `parent` no longer names what it named (removed).
    pub(super) fn unname(&self, parent: u64, name: &[u8]) {
        self.nodes().remove_name(parent, name);
    }

    /// `name` in `parent` moved to `new_name` in `new_parent` (and, exchanged, the other way).
    pub(super) fn renamed(
        &self,
        (parent, name): (u64, &[u8]),
        (new_parent, new_name): (u64, &[u8]),
        exchanged: bool,
    ) {
        let mut nodes = self.nodes();
        let moved = nodes.detach_name(parent, name);
        let other = if exchanged {
            nodes.detach_name(new_parent, new_name)
        } else {
            nodes
                .by_name
                .get(&(new_parent, Arc::from(new_name)))
                .copied()
        };
        if moved.is_some() && moved == other && !exchanged {
            // Two names of one file: the rename changed nothing.
            if let Some(node) = moved {
                nodes.add_name(node, parent, Arc::from(name));
            }
            return;
        }
        if !exchanged {
            // Replaced: that object lost this name (and is gone unless named or open elsewhere).
            nodes.remove_name(new_parent, new_name);
        }
        if let Some(node) = moved {
            nodes.add_name(node, new_parent, Arc::from(new_name));
        }
        if let (true, Some(node)) = (exchanged, other) {
            nodes.add_name(node, parent, Arc::from(name));
        }
    }

    /// The relative path of `node` through its first names, `.` for the root.
    fn path_of(&self, node: u64, first_name: usize) -> io::Result<(HostId, Vec<u8>)> {
        let nodes = self.nodes();
        let mut parts: Vec<Arc<[u8]>> = Vec::new();
        let n = nodes.by_node.get(&node).ok_or_else(stale)?;
        let id = n.id;
        let mut cur = node;
        let mut pick = first_name;
        while cur != ROOT_NODE {
            if parts.len() > MAX_DEPTH {
                return Err(stale());
            }
            let n = nodes.by_node.get(&cur).ok_or_else(stale)?;
            let (parent, name) = n.names.get(pick).ok_or_else(stale)?;
            parts.push(name.clone());
            cur = *parent;
            pick = 0;
        }
        let mut path = Vec::new();
        for part in parts.iter().rev() {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(part);
        }
        if path.is_empty() {
            path.push(b'.');
        }
        Ok((id, path))
    }

    /// An `O_PATH` descriptor of `node` (the object itself, a symlink not followed), found
    /// beneath the source and checked to be the node.
    pub(super) fn resolve(&self, node: u64) -> io::Result<OwnedFd> {
        let names = self
            .nodes()
            .by_node
            .get(&node)
            .map_or(1, |n| n.names.len().max(1));
        let mut last = stale();
        for pick in 0..names {
            let Ok((id, path)) = self.path_of(node, pick) else {
                break;
            };
            match self.open_beneath(&path) {
                Ok((fd, stat)) if HostId::of(&stat) == id => return Ok(fd),
                Ok(_) => last = stale(),
                Err(e) => last = e,
            }
        }
        // No name leads to it (unlinked while open, renamed on the host): an open file does.
        if let Some(file) = self.open_file(node) {
            return file.as_fd().try_clone_to_owned();
        }
        Err(last)
    }

    /// Remember that `file` is open on `node`.
    pub(super) fn opened(&self, node: u64, file: &Arc<File>) {
        if let Some(n) = self.nodes().by_node.get_mut(&node) {
            n.open.retain(|f| f.strong_count() > 0);
            n.open.push(Arc::downgrade(file));
        }
    }

    fn open_file(&self, node: u64) -> Option<Arc<File>> {
        let mut nodes = self.nodes();
        let n = nodes.by_node.get_mut(&node)?;
        n.open.retain(|f| f.strong_count() > 0);
        n.open.iter().find_map(Weak::upgrade)
    }

    /// `relative` opened `O_PATH | O_NOFOLLOW` beneath the root, with its attributes.
    fn open_beneath(&self, relative: &[u8]) -> io::Result<(OwnedFd, Stat)> {
        let fd = rustix::fs::openat2(
            &self.root,
            relative,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        Ok((fd, stat))
    }
}

/// The error for a node whose names no longer lead to it (changed on the host).
fn stale() -> io::Error {
    io::Error::from_raw_os_error(libc::ESTALE)
}

/// A name the kernel may pass for a child: not empty, no `/`, not `.` or `..`, no NUL.
pub(super) fn child_name(name: &[u8]) -> io::Result<&[u8]> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if name.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(name)
}

/// `/proc/self/fd/N` of an open descriptor: the way to reach exactly that object by path (the
/// magic link jumps to it; nothing after is followed). Always allowed to the process itself,
/// whatever its filesystem identity.
pub(super) fn proc_path(fd: &impl AsFd) -> CString {
    // Digits only: never holds a NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).unwrap_or_default()
}

/// Attributes of `name` in the directory `dir`, the name itself (a symlink not followed).
pub(super) fn stat_child(dir: &OwnedFd, name: &[u8]) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The process's effective group and supplementary groups as it started, restored after each
/// switch.
fn own_ids() -> &'static (Gid, Vec<Gid>) {
    static IDS: OnceLock<(Gid, Vec<Gid>)> = OnceLock::new();
    IDS.get_or_init(|| {
        (
            rustix::process::getegid(),
            rustix::process::getgroups().unwrap_or_default(),
        )
    })
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| rustix::process::geteuid().is_root())
}

/// This thread acting on the host as a caller, until dropped. Not `Send`: it must be dropped on
/// the thread that made it, before any `.await`.
///
/// The switch sets the thread's effective ids (Linux keeps credentials per thread; rustix's
/// `set_thread_*` are the raw per-thread calls, unlike glibc's process-wide ones) and keeps the
/// real and saved ids root, so the thread can switch back. While switched, the thread has no
/// effective capabilities: the host checks the caller's rights as for any process of theirs.
pub(super) struct AsCaller {
    /// The steps of the switch that were made, undone in reverse.
    groups: bool,
    gid: bool,
    uid: bool,
    _not_send: PhantomData<*const ()>,
}

impl AsCaller {
    /// Take on `caller`'s identity. A process that is not root acts as itself (it could not be
    /// anyone else). Fails rather than go on as root if the switch does not hold.
    pub(super) fn new(caller: &Caller) -> io::Result<AsCaller> {
        let mut guard = AsCaller {
            groups: false,
            gid: false,
            uid: false,
            _not_send: PhantomData,
        };
        if !running_as_root() || (caller.uid == 0 && caller.gid == 0) {
            return Ok(guard);
        }
        own_ids();
        // From here on, dropping the guard undoes whatever part of the switch was made.
        let groups: Vec<Gid> = caller
            .groups
            .iter()
            .map(|g| Gid::from_raw_unchecked(*g))
            .collect();
        rustix::thread::set_thread_groups(&groups)?;
        guard.groups = true;
        rustix::thread::set_thread_res_gid(None, Gid::from_raw_unchecked(caller.gid), None)?;
        guard.gid = true;
        rustix::thread::set_thread_res_uid(None, Uid::from_raw_unchecked(caller.uid), None)?;
        guard.uid = true;
        if rustix::process::geteuid().as_raw() != caller.uid
            || rustix::process::getegid().as_raw() != caller.gid
        {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(guard)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        let (egid, groups) = own_ids();
        // Back to root first: setting the group ids and groups needs it.
        let mut restored = Ok(());
        if self.uid {
            restored = rustix::thread::set_thread_res_uid(None, Uid::ROOT, None);
        }
        if self.gid {
            restored =
                restored.and_then(|()| rustix::thread::set_thread_res_gid(None, *egid, None));
        }
        if self.groups {
            restored = restored.and_then(|()| rustix::thread::set_thread_groups(groups));
        }
        let back = !self.uid || rustix::process::geteuid().is_root();
        if restored.is_err() || !back {
            // A thread that cannot be itself again must not serve anyone else.
            tracing::error!(error = ?restored.err(), "could not restore a thread's identity after a host call");
            std::process::abort();
        }
    }
}
