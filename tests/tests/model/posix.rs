//! The model: a small in-memory POSIX tree with Linux's permission, sticky and rename rules.

use std::collections::{BTreeMap, HashMap};

use tarbox_fs::{FileType, Ino, Usage};

use crate::history::{History, LayerAction};
use crate::ops::*;

pub(crate) type Id = usize;
pub(crate) const ROOT: Id = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Id>),
    Sym(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) nlink: u32,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) xattrs: BTreeMap<String, Vec<u8>>,
    /// For directories, the containing directory.
    pub(crate) parent: Id,
}

impl Node {
    pub(crate) fn ftype(&self) -> FileType {
        match self.kind {
            Kind::File(_) => FileType::Regular,
            Kind::Dir(_) => FileType::Directory,
            Kind::Sym(_) => FileType::Symlink,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    pub(crate) fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(d) => d.len() as u64,
            Kind::Sym(t) => t.len() as u64,
            Kind::Dir(_) => 0,
        }
    }
}

pub(crate) const R: u16 = 4;
pub(crate) const W: u16 = 2;
pub(crate) const X: u16 = 1;

#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) nodes: HashMap<Id, Node>,
    pub(crate) next: Id,
    /// Open handles per node (slots only: path operations close what they open).
    pub(crate) opens: HashMap<Id, u32>,
    pub(crate) slots: [Option<Id>; SLOTS],
    /// The engine's inode number of every node, learnt when the engine created it.
    pub(crate) ino: HashMap<Id, Ino>,
    /// The layers made so far and where the head sits among them.
    pub(crate) history: History,
}

/// The outcome of applying an operation to the model: `None` when the operation does not apply
/// (an empty handle slot, chmod of a symlink) and is skipped on both sides.
pub(crate) struct Applied {
    pub(crate) expect: Option<MRes>,
    pub(crate) created: Option<Id>,
    /// What the engine is asked to do for a layer operation, as the model resolved it.
    pub(crate) layer: Option<LayerAction>,
}

impl Model {
    pub(crate) fn new(root_mode: u16, root_ino: Ino) -> Model {
        let root = Node {
            kind: Kind::Dir(BTreeMap::new()),
            nlink: 2,
            perm: root_mode,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
            parent: ROOT,
        };
        Model {
            nodes: HashMap::from([(ROOT, root)]),
            next: 1,
            opens: HashMap::new(),
            slots: [None; SLOTS],
            ino: HashMap::from([(ROOT, root_ino)]),
            history: History::default(),
        }
    }

    /// A model of another tree of the same tenant (a layer's), for checking a time-travel view.
    pub(crate) fn with_nodes(&self, nodes: HashMap<Id, Node>) -> Model {
        Model {
            nodes,
            next: self.next,
            opens: HashMap::new(),
            slots: [None; SLOTS],
            ino: self.ino.clone(),
            history: History::default(),
        }
    }

    /// Usage as the engine charges it: one inode per node (the root included), each node's
    /// size rounded up to 4 KiB.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            inodes: self.nodes.len() as u64,
            bytes: self
                .nodes
                .values()
                .map(|n| n.size().div_ceil(4096) * 4096)
                .sum(),
        }
    }

    pub(crate) fn node(&self, id: Id) -> &Node {
        &self.nodes[&id]
    }

    pub(crate) fn node_mut(&mut self, id: Id) -> &mut Node {
        self.nodes.get_mut(&id).expect("model node exists")
    }

    pub(crate) fn entries(&self, id: Id) -> Option<&BTreeMap<Vec<u8>, Id>> {
        match &self.node(id).kind {
            Kind::Dir(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn entries_mut(&mut self, id: Id) -> &mut BTreeMap<Vec<u8>, Id> {
        match &mut self.node_mut(id).kind {
            Kind::Dir(e) => e,
            _ => panic!("model: {id} is not a directory"),
        }
    }

    pub(crate) fn child(&self, dir: Id, name: &[u8]) -> Option<Id> {
        self.entries(dir).and_then(|e| e.get(name).copied())
    }

    pub(crate) fn allowed(&self, who: Who, id: Id, mask: u16) -> bool {
        let n = self.node(id);
        if who == Who::Root {
            if mask & X != 0 && !n.is_dir() {
                return n.perm & 0o111 != 0;
            }
            return true;
        }
        let bits = if n.uid == USER_UID {
            (n.perm >> 6) & 7
        } else if n.gid == USER_GID {
            (n.perm >> 3) & 7
        } else {
            n.perm & 7
        };
        bits & mask == mask
    }

    pub(crate) fn search(&self, who: Who, dir: Id) -> Result<(), Errno> {
        if !self.node(dir).is_dir() {
            return err(libc::ENOTDIR);
        }
        if !self.allowed(who, dir, X) {
            return err(libc::EACCES);
        }
        Ok(())
    }

    pub(crate) fn modify(&self, who: Who, dir: Id) -> Result<(), Errno> {
        if !self.node(dir).is_dir() {
            return err(libc::ENOTDIR);
        }
        if !self.allowed(who, dir, W | X) {
            return err(libc::EACCES);
        }
        Ok(())
    }

    pub(crate) fn sticky(&self, who: Who, dir: Id, victim: Id) -> Result<(), Errno> {
        let d = self.node(dir);
        if d.perm & 0o1000 != 0
            && who != Who::Root
            && d.uid != USER_UID
            && self.node(victim).uid != USER_UID
        {
            return err(libc::EPERM);
        }
        Ok(())
    }

    pub(crate) fn owner(&self, who: Who, id: Id) -> bool {
        who == Who::Root || self.node(id).uid == USER_UID
    }

    /// Walk `comps` from the root as lookups do: each directory must be searchable.
    pub(crate) fn resolve(&self, who: Who, comps: &[Vec<u8>]) -> Result<Id, Errno> {
        let mut cur = ROOT;
        for c in comps {
            self.search(who, cur)?;
            cur = self.child(cur, c).ok_or(Errno(libc::ENOENT))?;
        }
        Ok(cur)
    }

    /// The node holding the last component (not necessarily a directory) and that name.
    pub(crate) fn parent(&self, who: Who, path: &P) -> Result<(Id, Vec<u8>), Errno> {
        let comps = path.comps();
        let (last, dirs) = comps.split_last().expect("paths are not empty");
        Ok((self.resolve(who, dirs)?, last.clone()))
    }

    pub(crate) fn stat(&self, id: Id) -> St {
        let n = self.node(id);
        St {
            ino: self.ino.get(&id).copied().unwrap_or(Ino(0)),
            kind: n.ftype(),
            size: (!n.is_dir()).then(|| n.size()),
            nlink: n.nlink,
            perm: Mode(u32::from(n.perm)),
            uid: n.uid,
            gid: n.gid,
        }
    }

    pub(crate) fn new_node(&mut self, who: Who, kind: Kind, perm: u16, parent: Id) -> Id {
        let id = self.next;
        self.next += 1;
        let (uid, gid) = who.ids();
        let nlink = if matches!(kind, Kind::Dir(_)) { 2 } else { 1 };
        self.nodes.insert(
            id,
            Node {
                kind,
                nlink,
                perm,
                uid,
                gid,
                xattrs: BTreeMap::new(),
                parent,
            },
        );
        id
    }

    /// Forget a node with no names and no open handles.
    pub(crate) fn maybe_free(&mut self, id: Id) {
        if self.node(id).nlink == 0 && self.opens.get(&id).copied().unwrap_or(0) == 0 {
            self.nodes.remove(&id);
        }
    }

    /// `victim` lost its name in `dir`.
    pub(crate) fn drop_name(&mut self, dir: Id, victim: Id) {
        if self.node(victim).is_dir() {
            self.node_mut(victim).nlink = 0;
            self.node_mut(dir).nlink -= 1;
        } else {
            self.node_mut(victim).nlink -= 1;
        }
        self.maybe_free(victim);
    }

    /// Whether `anc` is `id` or one of its ancestors.
    pub(crate) fn is_ancestor_or_self(&self, anc: Id, mut id: Id) -> bool {
        loop {
            if id == anc {
                return true;
            }
            if id == ROOT {
                return false;
            }
            id = self.node(id).parent;
        }
    }

    pub(crate) fn file_mut(&mut self, id: Id) -> &mut Vec<u8> {
        match &mut self.node_mut(id).kind {
            Kind::File(d) => d,
            _ => panic!("model: {id} is not a file"),
        }
    }

    pub(crate) fn write(&mut self, id: Id, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let f = self.file_mut(id);
        let end = off as usize + data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[off as usize..end].copy_from_slice(data);
    }

    pub(crate) fn read(&self, id: Id, off: u64, len: u32) -> Vec<u8> {
        match &self.node(id).kind {
            Kind::File(d) => {
                let start = (off as usize).min(d.len());
                let end = (off as usize + len as usize).min(d.len());
                d[start..end].to_vec()
            }
            _ => panic!("model: read of a non-file"),
        }
    }

    pub(crate) fn close_slot(&mut self, slot: usize) {
        if let Some(id) = self.slots[slot].take() {
            let n = self.opens.get_mut(&id).expect("open count");
            *n -= 1;
            if *n == 0 {
                self.opens.remove(&id);
            }
            self.maybe_free(id);
        }
    }
}
