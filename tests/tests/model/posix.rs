//! The model: a small in-memory POSIX tree with Linux's permission, sticky and rename rules.

use std::collections::{BTreeMap, HashMap};

use tarbox_fs::{FileType, Ino, Usage, XattrMode};

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

    pub(crate) fn apply(&mut self, op: &Op) -> Applied {
        let mut created = None;
        if matches!(
            op,
            Op::Checkpoint { .. } | Op::Switch { .. } | Op::Drop { .. }
        ) {
            return match self.apply_layer_op(op) {
                Some((expect, action)) => Applied {
                    expect: Some(expect),
                    created,
                    layer: Some(action),
                },
                None => Applied {
                    expect: None,
                    created,
                    layer: None,
                },
            };
        }
        let expect = match op {
            Op::HWrite { slot, .. }
            | Op::HRead { slot, .. }
            | Op::HTruncate { slot, .. }
            | Op::HStat { slot }
            | Op::HClose { slot }
                if self.slots[*slot].is_none() =>
            {
                None
            }
            Op::Chmod { who, path, .. }
                if self
                    .resolve(*who, &path.comps())
                    .is_ok_and(|id| matches!(self.node(id).kind, Kind::Sym(_))) =>
            {
                // chmod follows symlinks; the engine is never asked to chmod one.
                None
            }
            _ => Some(self.apply_op(op, &mut created)),
        };
        Applied {
            expect,
            created,
            layer: None,
        }
    }

    pub(crate) fn apply_op(&mut self, op: &Op, created: &mut Option<Id>) -> MRes {
        match op {
            Op::Create {
                who,
                path,
                mode,
                excl,
                trunc,
            } => {
                let (p, name) = self.parent(*who, path)?;
                self.search(*who, p)?;
                match self.child(p, &name) {
                    Some(_) if *excl => err(libc::EEXIST),
                    Some(id) => {
                        match self.node(id).kind {
                            Kind::Dir(_) => return err(libc::EISDIR),
                            Kind::Sym(_) => return err(libc::ELOOP),
                            Kind::File(_) => {}
                        }
                        if !self.allowed(*who, id, W) {
                            return err(libc::EACCES);
                        }
                        if *trunc {
                            self.file_mut(id).clear();
                        }
                        Ok(Out::Unit)
                    }
                    None => {
                        self.modify(*who, p)?;
                        let id = self.new_node(*who, Kind::File(Vec::new()), mode.0 as u16, p);
                        self.entries_mut(p).insert(name, id);
                        *created = Some(id);
                        Ok(Out::Unit)
                    }
                }
            }
            Op::Mkdir { who, path, mode } => {
                let (p, name) = self.parent(*who, path)?;
                self.search(*who, p)?;
                if self.child(p, &name).is_some() {
                    return err(libc::EEXIST);
                }
                self.modify(*who, p)?;
                let id = self.new_node(*who, Kind::Dir(BTreeMap::new()), mode.0 as u16, p);
                self.entries_mut(p).insert(name, id);
                self.node_mut(p).nlink += 1;
                *created = Some(id);
                Ok(Out::Unit)
            }
            Op::Symlink { path, target } => {
                let (p, name) = self.parent(Who::Root, path)?;
                self.search(Who::Root, p)?;
                if self.child(p, &name).is_some() {
                    return err(libc::EEXIST);
                }
                self.modify(Who::Root, p)?;
                let id = self.new_node(Who::Root, Kind::Sym(target.as_bytes().to_vec()), 0o777, p);
                self.entries_mut(p).insert(name, id);
                *created = Some(id);
                Ok(Out::Unit)
            }
            Op::Readlink { path } => {
                let id = self.resolve(Who::Root, &path.comps())?;
                match &self.node(id).kind {
                    Kind::Sym(t) => Ok(Out::Data(Data(t.clone()))),
                    _ => err(libc::EINVAL),
                }
            }
            Op::Write {
                who,
                path,
                off,
                len,
                seed,
            } => {
                let id = self.resolve(*who, &path.comps())?;
                match self.node(id).kind {
                    Kind::Dir(_) => return err(libc::EISDIR),
                    Kind::Sym(_) => return err(libc::ELOOP),
                    Kind::File(_) => {}
                }
                if !self.allowed(*who, id, W) {
                    return err(libc::EACCES);
                }
                self.write(id, *off, &pattern(*seed, *off, *len));
                Ok(Out::Len(*len as u32))
            }
            Op::Read {
                who,
                path,
                off,
                len,
            } => {
                let id = self.resolve(*who, &path.comps())?;
                if matches!(self.node(id).kind, Kind::Sym(_)) {
                    return err(libc::ELOOP);
                }
                if !self.allowed(*who, id, R) {
                    return err(libc::EACCES);
                }
                if self.node(id).is_dir() {
                    return Ok(Out::Unit);
                }
                Ok(Out::Data(Data(self.read(id, *off, *len))))
            }
            Op::Truncate { who, path, size } => {
                let id = self.resolve(*who, &path.comps())?;
                match self.node(id).kind {
                    Kind::Dir(_) => return err(libc::EISDIR),
                    Kind::Sym(_) => return err(libc::EINVAL),
                    Kind::File(_) => {}
                }
                if !self.allowed(*who, id, W) {
                    return err(libc::EACCES);
                }
                self.file_mut(id).resize(*size as usize, 0);
                Ok(Out::Unit)
            }
            Op::Unlink { who, path } | Op::Rmdir { who, path } => {
                let rmdir = matches!(op, Op::Rmdir { .. });
                let (p, name) = self.parent(*who, path)?;
                self.search(*who, p)?;
                let id = self.child(p, &name).ok_or(Errno(libc::ENOENT))?;
                self.modify(*who, p)?;
                self.sticky(*who, p, id)?;
                let is_dir = self.node(id).is_dir();
                if rmdir && !is_dir {
                    return err(libc::ENOTDIR);
                }
                if !rmdir && is_dir {
                    return err(libc::EISDIR);
                }
                if is_dir && !self.entries(id).is_some_and(BTreeMap::is_empty) {
                    return err(libc::ENOTEMPTY);
                }
                self.entries_mut(p).remove(&name);
                self.drop_name(p, id);
                Ok(Out::Unit)
            }
            Op::Rename { from, to, flags } => self.rename(from, to, *flags),
            Op::Link { from, to } => {
                let id = self.resolve(Who::Root, &from.comps())?;
                let (p, name) = self.parent(Who::Root, to)?;
                self.search(Who::Root, p)?;
                if self.child(p, &name).is_some() {
                    return err(libc::EEXIST);
                }
                self.modify(Who::Root, p)?;
                if self.node(id).is_dir() {
                    return err(libc::EPERM);
                }
                self.node_mut(id).nlink += 1;
                self.entries_mut(p).insert(name, id);
                Ok(Out::Unit)
            }
            Op::SetXattr {
                who,
                path,
                name,
                value,
                mode,
            } => {
                let id = self.resolve(*who, &path.comps())?;
                self.check_xattr_write(*who, id)?;
                let exists = self.node(id).xattrs.contains_key(*name);
                match mode {
                    XattrMode::Create if exists => return err(libc::EEXIST),
                    XattrMode::Replace if !exists => return err(libc::ENODATA),
                    _ => {}
                }
                self.node_mut(id)
                    .xattrs
                    .insert(name.to_string(), value.clone());
                Ok(Out::Unit)
            }
            Op::GetXattr { who, path, name } => {
                let id = self.resolve(*who, &path.comps())?;
                if !self.allowed(*who, id, R) {
                    return err(libc::EACCES);
                }
                match self.node(id).xattrs.get(*name) {
                    Some(v) => Ok(Out::Data(Data(v.clone()))),
                    None => err(libc::ENODATA),
                }
            }
            Op::RemoveXattr { who, path, name } => {
                let id = self.resolve(*who, &path.comps())?;
                self.check_xattr_write(*who, id)?;
                match self.node_mut(id).xattrs.remove(*name) {
                    Some(_) => Ok(Out::Unit),
                    None => err(libc::ENODATA),
                }
            }
            Op::ListXattr { path } => {
                let id = self.resolve(Who::Root, &path.comps())?;
                Ok(Out::Names(self.node(id).xattrs.keys().cloned().collect()))
            }
            Op::Chmod { who, path, mode } => {
                let id = self.resolve(*who, &path.comps())?;
                if !self.owner(*who, id) {
                    return err(libc::EPERM);
                }
                self.node_mut(id).perm = mode.0 as u16;
                Ok(Out::Unit)
            }
            Op::Stat { who, path } => {
                let id = self.resolve(*who, &path.comps())?;
                Ok(Out::Stat(self.stat(id)))
            }
            Op::HOpen { slot, path } => {
                self.close_slot(*slot);
                let id = self.resolve(Who::Root, &path.comps())?;
                match self.node(id).kind {
                    Kind::Dir(_) => return err(libc::EISDIR),
                    Kind::Sym(_) => return err(libc::ELOOP),
                    Kind::File(_) => {}
                }
                *self.opens.entry(id).or_default() += 1;
                self.slots[*slot] = Some(id);
                Ok(Out::Unit)
            }
            Op::HWrite {
                slot,
                off,
                len,
                seed,
            } => {
                let id = self.slots[*slot].expect("slot checked");
                self.write(id, *off, &pattern(*seed, *off, *len));
                Ok(Out::Len(*len as u32))
            }
            Op::HRead { slot, off, len } => {
                let id = self.slots[*slot].expect("slot checked");
                Ok(Out::Data(Data(self.read(id, *off, *len))))
            }
            Op::HTruncate { slot, size } => {
                let id = self.slots[*slot].expect("slot checked");
                self.file_mut(id).resize(*size as usize, 0);
                Ok(Out::Unit)
            }
            Op::HStat { slot } => {
                let id = self.slots[*slot].expect("slot checked");
                Ok(Out::Stat(self.stat(id)))
            }
            Op::HClose { slot } => {
                self.close_slot(*slot);
                Ok(Out::Unit)
            }
            Op::Checkpoint { .. } | Op::Switch { .. } | Op::Drop { .. } => {
                unreachable!("layer operations are applied by apply_layer_op")
            }
        }
    }

    pub(crate) fn check_xattr_write(&self, who: Who, id: Id) -> Result<(), Errno> {
        let n = self.node(id);
        if matches!(n.kind, Kind::Sym(_)) {
            return err(libc::EPERM);
        }
        if n.is_dir() && n.perm & 0o1000 != 0 && !self.owner(who, id) {
            return err(libc::EPERM);
        }
        if !self.allowed(who, id, W) {
            return err(libc::EACCES);
        }
        Ok(())
    }

    /// `renameat2` as Linux orders its checks: both parents resolved, source looked up,
    /// NOREPLACE/EXCHANGE, the ancestry traps, same inode, then type and emptiness checks.
    pub(crate) fn rename(&mut self, from: &P, to: &P, flags: RFlags) -> MRes {
        let (sp, sname) = self.parent(Who::Root, from)?;
        let (dp, dname) = self.parent(Who::Root, to)?;
        if flags == RFlags::Both {
            return err(libc::EINVAL);
        }
        self.search(Who::Root, sp)?;
        self.search(Who::Root, dp)?;
        let s = self.child(sp, &sname).ok_or(Errno(libc::ENOENT))?;
        let d = self.child(dp, &dname);
        if flags == RFlags::NoReplace && d.is_some() {
            return err(libc::EEXIST);
        }
        if flags == RFlags::Exchange && d.is_none() {
            return err(libc::ENOENT);
        }
        if d == Some(s) {
            return Ok(Out::Unit);
        }
        let s_dir = self.node(s).is_dir();
        if s_dir && sp != dp && self.is_ancestor_or_self(s, dp) {
            return err(libc::EINVAL);
        }
        if flags == RFlags::Exchange {
            let d = d.expect("checked");
            let d_dir = self.node(d).is_dir();
            if d_dir && sp != dp && self.is_ancestor_or_self(d, sp) {
                return err(libc::EINVAL);
            }
            self.entries_mut(sp).insert(sname, d);
            self.entries_mut(dp).insert(dname, s);
            if sp != dp {
                if s_dir {
                    self.node_mut(s).parent = dp;
                    self.node_mut(sp).nlink -= 1;
                    self.node_mut(dp).nlink += 1;
                }
                if d_dir {
                    self.node_mut(d).parent = sp;
                    self.node_mut(dp).nlink -= 1;
                    self.node_mut(sp).nlink += 1;
                }
            }
            return Ok(Out::Unit);
        }
        if let Some(d) = d {
            let d_dir = self.node(d).is_dir();
            if d_dir && sp != dp && self.is_ancestor_or_self(d, sp) {
                return err(libc::ENOTEMPTY);
            }
            if s_dir && !d_dir {
                return err(libc::ENOTDIR);
            }
            if !s_dir && d_dir {
                return err(libc::EISDIR);
            }
            if d_dir && !self.entries(d).is_some_and(BTreeMap::is_empty) {
                return err(libc::ENOTEMPTY);
            }
        }
        self.entries_mut(sp).remove(&sname);
        if let Some(d) = d {
            self.entries_mut(dp).remove(&dname);
            self.drop_name(dp, d);
        }
        self.entries_mut(dp).insert(dname, s);
        if s_dir && sp != dp {
            self.node_mut(s).parent = dp;
            self.node_mut(sp).nlink -= 1;
            self.node_mut(dp).nlink += 1;
        }
        Ok(Out::Unit)
    }
}
