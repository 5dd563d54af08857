//! The namespace: lookup, creating nodes, removing them, hard links and rename.
//!
//! Each mutation follows one pattern: look up the inodes involved without locks, begin a
//! transaction locking them, look them up again (a different answer means another engine got in
//! between: start over), check permissions and POSIX rules, write, commit.

use std::collections::HashMap;

use super::{Volume, names, perm};
use crate::backend::StoreTxn;
use crate::error::{BackendError, FsError, FsResult};
use crate::types::{Caller, FileAttr, FileType, Ino, Inode, RenameFlags};

/// Most hard links an inode may have (ext4's limit).
pub(crate) const LINK_MAX: u32 = 65000;

/// A conflict detected by the engine itself: what it looked up changed before the lock was taken.
fn moved() -> FsError {
    FsError::Backend(BackendError::Conflict)
}

/// What a new node is.
pub(crate) struct NodeSpec<'a> {
    pub kind: FileType,
    pub perm: u16,
    pub rdev: u32,
    pub target: &'a [u8],
}

/// Inodes loaded in a transaction, mutated in place and written back once, so that operations
/// touching the same inode twice (rename within one directory) cannot write a stale copy.
struct Loaded {
    inodes: HashMap<Ino, Inode>,
    dirty: Vec<Ino>,
}

impl Loaded {
    fn new() -> Loaded {
        Loaded {
            inodes: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    async fn load(&mut self, txn: &mut dyn StoreTxn, ino: Ino) -> FsResult<Inode> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        let inode = txn.inode(ino).await?.ok_or(FsError::NotFound)?;
        self.inodes.insert(ino, inode.clone());
        Ok(inode)
    }

    fn update(&mut self, ino: Ino, f: impl FnOnce(&mut Inode)) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            f(i);
            if !self.dirty.contains(&ino) {
                self.dirty.push(ino);
            }
        }
    }

    fn forget(&mut self, ino: Ino) {
        self.dirty.retain(|i| *i != ino);
    }

    async fn store(&self, txn: &mut dyn StoreTxn) -> FsResult<()> {
        for ino in &self.dirty {
            if let Some(i) = self.inodes.get(ino) {
                txn.put_inode(i).await?;
            }
        }
        Ok(())
    }
}

/// What a rename moved: the source inode, now at the new name, and for an exchange the inode now
/// at the old name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renamed {
    pub(crate) moved: Ino,
    pub(crate) exchanged: Option<Ino>,
}

impl Volume {
    /// Find `name` in directory `parent`.
    ///
    /// `ENOENT` if absent, `ENOTDIR` if `parent` is not a directory, `EACCES` without search
    /// permission on it. `.` and `..` resolve to the directory and its parent.
    pub(crate) async fn do_lookup(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
    ) -> FsResult<FileAttr> {
        names::validate(name)?;
        let (mut r1, mut r2) = (self.reader(), self.reader());
        if names::is_dot(name) {
            let dir = r1.inode(parent).await?.ok_or(FsError::NotFound)?;
            perm::check_search(caller, &dir)?;
            let ino = if name == b"." { parent } else { dir.parent };
            let inode = r1.inode(ino).await?.ok_or(FsError::NotFound)?;
            return self.attr_of(inode).await;
        }
        // The directory (for the permission check) and the entry are independent reads: one
        // round trip of latency, or none when both are cached.
        let (dir, found) = futures::join!(r1.inode(parent), r2.lookup_inode(parent, name));
        let dir = dir?.ok_or(FsError::NotFound)?;
        perm::check_search(caller, &dir)?;
        let (_, inode) = found?.ok_or(FsError::NotFound)?;
        self.attr_of(inode).await
    }

    /// Create a regular file, FIFO, socket or device node. `mode` carries the type bits
    /// (`S_IFREG`… ) and the permission bits, already reduced by the umask.
    ///
    /// `EEXIST` if the name exists, `EPERM` for a device node created by a non-root caller,
    /// `EINVAL` for a directory or symlink type (use `mkdir`/`symlink`), `ENOSPC` over quota.
    pub(crate) async fn do_mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        let kind = FileType::from_mode(mode).unwrap_or(FileType::Regular);
        match kind {
            FileType::Directory | FileType::Symlink => {
                return Err(FsError::Invalid(
                    "mknod cannot create directories or symlinks",
                ));
            }
            FileType::CharDevice | FileType::BlockDevice if !caller.is_root() => {
                return Err(FsError::NotPermitted);
            }
            _ => {}
        }
        let spec = NodeSpec {
            kind,
            perm: (mode & 0o7777) as u16,
            rdev: if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
                rdev
            } else {
                0
            },
            target: &[],
        };
        let inode = self.create_node(caller, parent, name, &spec).await?;
        self.attr_of(inode).await
    }

    /// Create a directory. `EEXIST`, `EACCES`, `EMLINK` (parent link count), `ENOSPC`.
    pub(crate) async fn do_mkdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> FsResult<FileAttr> {
        let spec = NodeSpec {
            kind: FileType::Directory,
            perm: (mode & 0o7777) as u16,
            rdev: 0,
            target: &[],
        };
        let inode = self.create_node(caller, parent, name, &spec).await?;
        self.attr_of(inode).await
    }

    /// Create a symlink to `target` (at most 4095 bytes: `ENAMETOOLONG`; empty: `ENOENT`).
    pub(crate) async fn do_symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<FileAttr> {
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() >= names::PATH_MAX {
            return Err(FsError::NameTooLong);
        }
        if target.contains(&0) {
            return Err(FsError::Invalid("symlink target contains NUL"));
        }
        let spec = NodeSpec {
            kind: FileType::Symlink,
            perm: 0o777,
            rdev: 0,
            target,
        };
        let inode = self.create_node(caller, parent, name, &spec).await?;
        self.attr_of(inode).await
    }

    /// The target of a symlink. `EINVAL` for other kinds.
    pub(crate) async fn do_readlink(&self, _caller: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        let inode = self.reader().inode(ino).await?.ok_or(FsError::NotFound)?;
        if inode.kind != FileType::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        Ok(inode.target)
    }

    /// Create a node in one transaction. Shared by mknod, mkdir, symlink and create.
    pub(crate) async fn create_node(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        spec: &NodeSpec<'_>,
    ) -> FsResult<Inode> {
        names::validate_new(name)?;
        names::check_not_reserved(parent, name)?;
        self.ensure_writable()?;
        let ino = self.alloc_ino().await?;
        self.retrying(|| self.create_node_once(caller, parent, name, spec, ino))
            .await
    }

    async fn create_node_once(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        spec: &NodeSpec<'_>,
        ino: Ino,
    ) -> FsResult<Inode> {
        let mut txn = self.begin(&[parent]).await?;
        let mut dir = Volume::inode_in(txn.as_mut(), parent).await?;
        perm::check_search(caller, &dir)?;
        if txn.lookup(parent, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        perm::check_modify_dir(caller, &dir)?;
        if spec.kind == FileType::Directory && dir.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let now = self.now();
        let setgid_dir = dir.perm & libc::S_ISGID as u16 != 0;
        let gid = if setgid_dir { dir.gid } else { caller.gid };
        let mut perm = spec.perm;
        if spec.kind == FileType::Directory && setgid_dir {
            // Subdirectories of a setgid directory inherit the bit.
            perm |= libc::S_ISGID as u16;
        } else if perm & libc::S_ISGID as u16 != 0 && !caller.is_root() && !caller.in_group(gid) {
            // Nobody may create a setgid file for a group they are not in.
            perm &= !(libc::S_ISGID as u16);
        }
        let inode = Inode {
            ino,
            kind: spec.kind,
            perm,
            uid: caller.uid,
            gid,
            nlink: if spec.kind == FileType::Directory {
                2
            } else {
                1
            },
            size: spec.target.len() as u64,
            atime: now,
            mtime: now,
            ctime: now,
            btime: now,
            rdev: spec.rdev,
            parent,
            target: spec.target.to_vec(),
        };
        dir.mtime = now;
        dir.ctime = now;
        if spec.kind == FileType::Directory {
            dir.nlink += 1;
        }
        let charge = inode.charged_bytes() as i64;
        if let Err(kind) = txn.create_entry(&dir, name, &inode, charge).await? {
            return Err(FsError::QuotaExceeded(kind));
        }
        Volume::note_inode(ino);
        self.commit(txn).await?;
        Ok(inode)
    }

    /// Remove a non-directory name. `EISDIR` for a directory, `EPERM` under the sticky rule.
    /// The inode lives on while it has other names or open handles. Returns the inode unlinked.
    pub(crate) async fn do_unlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
    ) -> FsResult<Ino> {
        names::validate(name)?;
        if names::is_dot(name) {
            return Err(FsError::IsDir);
        }
        self.ensure_writable()?;
        self.retrying(|| self.remove_once(caller, parent, name, false))
            .await
    }

    /// Remove an empty directory. `ENOTEMPTY`, `ENOTDIR`, `EINVAL` for `.`, `ENOTEMPTY` for `..`.
    /// Returns the directory removed.
    pub(crate) async fn do_rmdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
    ) -> FsResult<Ino> {
        names::validate(name)?;
        match name {
            b"." => return Err(FsError::Invalid("cannot remove '.'")),
            b".." => return Err(FsError::NotEmpty),
            _ => {}
        }
        self.ensure_writable()?;
        self.retrying(|| self.remove_once(caller, parent, name, true))
            .await
    }

    async fn remove_once(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        dir_wanted: bool,
    ) -> FsResult<Ino> {
        let seen = {
            // The name from the store: a name another engine bound a moment ago must not be
            // refused with ENOENT from a cache its announcement has not reached yet.
            let (mut r1, mut r2) = (self.reader(), self.fresh_reader());
            let (dir, entry) = futures::join!(r1.inode(parent), r2.lookup(parent, name));
            perm::check_search(caller, &dir?.ok_or(FsError::NotFound)?)?;
            entry?.ok_or(FsError::NotFound)?
        };
        let mut txn = self.begin(&[parent, seen.ino]).await?;
        let mut dir = Volume::inode_in(txn.as_mut(), parent).await?;
        perm::check_search(caller, &dir)?;
        let entry = txn.lookup(parent, name).await?.ok_or(FsError::NotFound)?;
        if entry.ino != seen.ino {
            return Err(moved());
        }
        perm::check_modify_dir(caller, &dir)?;
        let mut victim = Volume::inode_in(txn.as_mut(), entry.ino).await?;
        // Linux's may_delete order: directory permission, sticky rule, then the type.
        perm::check_sticky(caller, &dir, &victim)?;
        let is_dir = victim.kind == FileType::Directory;
        match (dir_wanted, is_dir) {
            (false, true) => return Err(FsError::IsDir),
            (true, false) => return Err(FsError::NotDir),
            _ => {}
        }
        if is_dir && txn.dir_has_entries(victim.ino).await? {
            return Err(FsError::NotEmpty);
        }
        let now = self.now();
        txn.unbind(parent, name).await?;
        dir.mtime = now;
        dir.ctime = now;
        if is_dir {
            dir.nlink = dir.nlink.saturating_sub(1);
            victim.nlink = 0;
        } else {
            victim.nlink = victim.nlink.saturating_sub(1);
        }
        victim.ctime = now;
        txn.put_inode(&dir).await?;
        let orphaned = self.drop_link(txn.as_mut(), &victim).await?;
        Volume::note_inode(victim.ino);
        self.commit(txn).await?;
        if orphaned {
            self.mark_unlinked(victim.ino).await;
        }
        Ok(victim.ino)
    }

    /// Store `inode` after it lost a name. With no names left it is deleted (quota returned), unless
    /// this volume still has it open: then it becomes an orphan, deleted at the last release.
    /// Returns whether it became an orphan.
    async fn drop_link(&self, txn: &mut dyn StoreTxn, inode: &Inode) -> FsResult<bool> {
        if inode.nlink > 0 {
            txn.put_inode(inode).await?;
            return Ok(false);
        }
        if self.is_open(inode.ino) {
            txn.put_inode(inode).await?;
            txn.add_orphan(inode.ino, self.shared().session).await?;
            return Ok(true);
        }
        txn.remove_inode(inode.ino).await?;
        let _ = txn.charge(-(inode.charged_bytes() as i64), -1).await?;
        Ok(false)
    }

    /// Give `ino` the additional name `newname` in `newparent`.
    ///
    /// `EPERM` for a directory, `EMLINK` at the link limit, `EEXIST` if the name exists, `ENOENT`
    /// for an inode with no names left.
    pub(crate) async fn do_link(
        &self,
        caller: &Caller,
        ino: Ino,
        newparent: Ino,
        newname: &[u8],
    ) -> FsResult<FileAttr> {
        names::validate_new(newname)?;
        names::check_not_reserved(newparent, newname)?;
        self.ensure_writable()?;
        let inode = self
            .retrying(|| self.link_once(caller, ino, newparent, newname))
            .await?;
        self.attr_of(inode).await
    }

    async fn link_once(
        &self,
        caller: &Caller,
        ino: Ino,
        newparent: Ino,
        newname: &[u8],
    ) -> FsResult<Inode> {
        let mut txn = self.begin(&[ino, newparent]).await?;
        let mut inode = Volume::inode_in(txn.as_mut(), ino).await?;
        let mut dir = Volume::inode_in(txn.as_mut(), newparent).await?;
        // Linux's order: the new parent and name (ENOTDIR, EEXIST, EACCES), then the source.
        perm::check_search(caller, &dir)?;
        if txn.lookup(newparent, newname).await?.is_some() {
            return Err(FsError::Exists);
        }
        perm::check_modify_dir(caller, &dir)?;
        if inode.kind == FileType::Directory {
            return Err(FsError::NotPermitted);
        }
        if inode.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if inode.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let now = self.now();
        txn.bind(newparent, newname, ino, inode.kind).await?;
        inode.nlink += 1;
        inode.ctime = now;
        dir.mtime = now;
        dir.ctime = now;
        txn.put_inode(&inode).await?;
        txn.put_inode(&dir).await?;
        self.commit(txn).await?;
        Ok(inode)
    }

    /// Rename, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    ///
    /// `ENOENT` (source, or target with exchange), `EEXIST` (no-replace), `EINVAL` (a directory
    /// into itself or its descendant, both flags, dot names), `ENOTDIR`/`EISDIR` (type mismatch
    /// when replacing), `ENOTEMPTY` (replacing a non-empty directory), `EPERM` (sticky rule),
    /// `EACCES`. Renaming a name onto another name of the same inode does nothing.
    pub(crate) async fn do_rename(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<Renamed> {
        names::validate(name)?;
        names::validate(newname)?;
        if flags.exchange && flags.no_replace {
            return Err(FsError::Invalid("RENAME_EXCHANGE with RENAME_NOREPLACE"));
        }
        if names::is_dot(name) || names::is_dot(newname) {
            return Err(FsError::Invalid("cannot rename '.' or '..'"));
        }
        names::check_not_reserved(newparent, newname)?;
        self.ensure_writable()?;
        let (renamed, orphan) = self
            .retrying(|| self.rename_once(caller, parent, name, newparent, newname, flags))
            .await?;
        if let Some(ino) = orphan {
            self.mark_unlinked(ino).await;
        }
        Ok(renamed)
    }

    /// One attempt at a rename; returns what moved and the replaced inode if it became an
    /// orphan.
    async fn rename_once(
        &self,
        caller: &Caller,
        sp: Ino,
        sname: &[u8],
        dp: Ino,
        dname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<(Renamed, Option<Ino>)> {
        let (src, dst) = {
            // Four independent reads, issued together; the names from the store (see
            // `remove_once`).
            let (mut r1, mut r2, mut r3, mut r4) = (
                self.reader(),
                self.reader(),
                self.fresh_reader(),
                self.fresh_reader(),
            );
            let (sdir, ddir, src, dst) = futures::join!(
                r1.inode(sp),
                r2.inode(dp),
                r3.lookup(sp, sname),
                r4.lookup(dp, dname)
            );
            // Both parents are checked before either name, as Linux resolves both parent paths
            // first (a missing source under a non-directory target is ENOTDIR).
            perm::check_search(caller, &sdir?.ok_or(FsError::NotFound)?)?;
            perm::check_search(caller, &ddir?.ok_or(FsError::NotFound)?)?;
            let src = src?.ok_or(FsError::NotFound)?;
            (src, dst?)
        };
        let mut locks = vec![sp, dp, src.ino];
        if let Some(d) = &dst {
            locks.push(d.ino);
        }
        let dir_moves = sp != dp
            && (src.kind == FileType::Directory
                || (flags.exchange && dst.as_ref().is_some_and(|d| d.kind == FileType::Directory)));
        if dir_moves {
            // Moving directories between parents can create cycles with a concurrent rename;
            // serialize those renames per tenant (as Linux serializes them per superblock).
            locks.push(Ino(0));
        }
        let mut txn = self.begin(&locks).await?;
        let t = txn.as_mut();
        let src_now = t.lookup(sp, sname).await?.ok_or(FsError::NotFound)?;
        let dst_now = t.lookup(dp, dname).await?;
        if src_now.ino != src.ino || dst_now.as_ref().map(|d| d.ino) != dst.as_ref().map(|d| d.ino)
        {
            return Err(moved());
        }
        let mut loaded = Loaded::new();
        let sdir = loaded.load(t, sp).await?;
        let ddir = loaded.load(t, dp).await?;
        perm::check_modify_dir(caller, &sdir)?;
        perm::check_modify_dir(caller, &ddir)?;
        let s = loaded.load(t, src.ino).await?;
        perm::check_sticky(caller, &sdir, &s)?;
        let d = match &dst {
            Some(e) => {
                let d = loaded.load(t, e.ino).await?;
                perm::check_sticky(caller, &ddir, &d)?;
                Some(d)
            }
            None => None,
        };
        if flags.no_replace && d.is_some() {
            // Even onto another name of the same inode, as Linux.
            return Err(FsError::Exists);
        }
        if flags.exchange && d.is_none() {
            return Err(FsError::NotFound);
        }
        let mut renamed = Renamed {
            moved: s.ino,
            exchanged: None,
        };
        if d.as_ref().is_some_and(|d| d.ino == s.ino) {
            // Two names of one inode: POSIX says do nothing.
            return Ok((renamed, None));
        }
        let s_dir = s.kind == FileType::Directory;
        if s_dir && sp != dp {
            // Moving a directory rewrites its `..`: that needs write permission on it.
            perm::check(caller, &s, perm::W)?;
            self.check_not_ancestor(t, s.ino, dp).await?;
        }
        let now = self.now();
        if flags.exchange {
            let d = d.ok_or(FsError::NotFound)?;
            let d_dir = d.kind == FileType::Directory;
            if d_dir && sp != dp {
                perm::check(caller, &d, perm::W)?;
                self.check_not_ancestor(t, d.ino, sp).await?;
            }
            t.bind(sp, sname, d.ino, d.kind).await?;
            t.bind(dp, dname, s.ino, s.kind).await?;
            if sp != dp {
                loaded.update(s.ino, |i| i.parent = dp);
                loaded.update(d.ino, |i| i.parent = sp);
                let delta = i64::from(s_dir) - i64::from(d_dir);
                loaded.update(sp, |i| i.nlink = add_links(i.nlink, -delta));
                loaded.update(dp, |i| i.nlink = add_links(i.nlink, delta));
            }
            loaded.update(s.ino, |i| i.ctime = now);
            loaded.update(d.ino, |i| i.ctime = now);
            for dir in [sp, dp] {
                loaded.update(dir, |i| {
                    i.mtime = now;
                    i.ctime = now;
                });
            }
            loaded.store(t).await?;
            self.commit(txn).await?;
            renamed.exchanged = Some(d.ino);
            return Ok((renamed, None));
        }
        let mut orphan = None;
        if let Some(d) = &d {
            let d_dir = d.kind == FileType::Directory;
            if d_dir && sp != dp {
                // Replacing an ancestor of the source (`a/f` onto `a`): Linux says ENOTEMPTY
                // before looking at types.
                if let Err(FsError::Invalid(_)) = self.check_not_ancestor(t, d.ino, sp).await {
                    return Err(FsError::NotEmpty);
                }
            }
            if s_dir && !d_dir {
                return Err(FsError::NotDir);
            }
            if !s_dir && d_dir {
                return Err(FsError::IsDir);
            }
            if d_dir && t.dir_has_entries(d.ino).await? {
                return Err(FsError::NotEmpty);
            }
        }
        t.unbind(sp, sname).await?;
        t.bind(dp, dname, s.ino, s.kind).await?;
        if sp != dp {
            loaded.update(s.ino, |i| i.parent = dp);
        }
        if s_dir && sp != dp {
            loaded.update(sp, |i| i.nlink = add_links(i.nlink, -1));
            loaded.update(dp, |i| i.nlink = add_links(i.nlink, 1));
        }
        loaded.update(s.ino, |i| i.ctime = now);
        for dir in [sp, dp] {
            loaded.update(dir, |i| {
                i.mtime = now;
                i.ctime = now;
            });
        }
        if let Some(mut d) = d {
            if d.kind == FileType::Directory {
                d.nlink = 0;
                loaded.update(dp, |i| i.nlink = add_links(i.nlink, -1));
            } else {
                d.nlink = d.nlink.saturating_sub(1);
            }
            d.ctime = now;
            loaded.forget(d.ino);
            loaded.store(t).await?;
            if self.drop_link(t, &d).await? {
                orphan = Some(d.ino);
            }
        } else {
            loaded.store(t).await?;
        }
        self.commit(txn).await?;
        Ok((renamed, orphan))
    }

    /// `EINVAL` if `dir` is `ancestor_of` or one of its ancestors is `dir` (moving a directory
    /// into its own subtree).
    async fn check_not_ancestor(
        &self,
        txn: &mut dyn StoreTxn,
        dir: Ino,
        mut target: Ino,
    ) -> FsResult<()> {
        loop {
            if target == dir {
                return Err(FsError::Invalid("cannot move a directory into itself"));
            }
            if target == Ino::ROOT {
                return Ok(());
            }
            let inode = Volume::inode_in(txn, target).await?;
            if inode.parent == target {
                return Ok(());
            }
            target = inode.parent;
        }
    }
}

fn add_links(n: u32, delta: i64) -> u32 {
    u32::try_from((i64::from(n) + delta).max(0)).unwrap_or(u32::MAX)
}
