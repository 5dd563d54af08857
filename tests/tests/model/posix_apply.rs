//! The model, continued: applying an operation to the tree, with Linux's order of checks (see
//! `posix` for the tree itself and its permission and sticky rules).

use std::collections::BTreeMap;

use tarbox_fs::XattrMode;

use crate::ops::*;
use crate::posix::{Applied, Id, Kind, Model, R, W};

impl Model {
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
