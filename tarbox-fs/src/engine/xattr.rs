//! Extended attributes, with Linux's namespace rules.
//!
//! - `user.*`: regular files and directories only (`EPERM` to set on others, as Linux); read
//!   needs read permission, write needs write permission, and in a sticky directory only the
//!   owner may set them.
//! - `trusted.*` and `security.*` writes are reserved to root; `trusted.*` is invisible to others.
//! - `system.*` (POSIX ACLs) is not supported: `EOPNOTSUPP`, so tools fall back to mode bits.
//! - Names longer than 255 bytes or empty: `ERANGE`; values over 64 KiB: `E2BIG`.

use super::{Volume, perm};
use crate::error::{FsError, FsResult};
use crate::types::{Caller, FileType, Ino, Inode, XattrMode};

const XATTR_NAME_MAX: usize = 255;
/// Largest value, as `XATTR_SIZE_MAX` on Linux.
pub const XATTR_SIZE_MAX: usize = 65536;

#[derive(PartialEq, Eq)]
enum Namespace {
    User,
    Trusted,
    Security,
}

fn namespace(name: &[u8]) -> FsResult<Namespace> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    if name.starts_with(b"user.") && name.len() > 5 {
        Ok(Namespace::User)
    } else if name.starts_with(b"trusted.") && name.len() > 8 {
        Ok(Namespace::Trusted)
    } else if name.starts_with(b"security.") && name.len() > 9 {
        Ok(Namespace::Security)
    } else {
        Err(FsError::NotSupported("extended attribute namespace"))
    }
}

fn check_read(caller: &Caller, inode: &Inode, ns: &Namespace) -> FsResult<()> {
    match ns {
        Namespace::User => perm::check(caller, inode, perm::R),
        Namespace::Trusted if !caller.is_root() => Err(FsError::NoData),
        _ => Ok(()),
    }
}

fn check_write(caller: &Caller, inode: &Inode, ns: &Namespace) -> FsResult<()> {
    match ns {
        Namespace::User => {
            if !matches!(inode.kind, FileType::Regular | FileType::Directory) {
                return Err(FsError::NotPermitted);
            }
            if inode.kind == FileType::Directory
                && inode.perm & libc::S_ISVTX as u16 != 0
                && !perm::is_owner(caller, inode)
            {
                return Err(FsError::NotPermitted);
            }
            perm::check(caller, inode, perm::W)
        }
        _ if caller.is_root() => Ok(()),
        _ => Err(FsError::NotPermitted),
    }
}

impl Volume {
    /// The value of attribute `name`. `ENODATA` if absent.
    pub(crate) async fn do_getxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
    ) -> FsResult<Vec<u8>> {
        let ns = namespace(name)?;
        let mut r = self.reader();
        let inode = r.inode(ino).await?.ok_or(FsError::NotFound)?;
        check_read(caller, &inode, &ns)?;
        r.xattr(ino, name).await?.ok_or(FsError::NoData)
    }

    /// Names of the attributes the caller may see.
    pub(crate) async fn do_listxattr(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        let mut r = self.reader();
        let inode = r.inode(ino).await?.ok_or(FsError::NotFound)?;
        let _ = inode;
        let names = r.xattr_names(ino).await?;
        Ok(names
            .into_iter()
            .filter(|n| caller.is_root() || !n.starts_with(b"trusted."))
            .collect())
    }

    /// Set attribute `name`. `EEXIST` with [`XattrMode::Create`] if present, `ENODATA` with
    /// [`XattrMode::Replace`] if absent.
    pub(crate) async fn do_setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        let ns = namespace(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooBig);
        }
        self.ensure_writable()?;
        self.retrying(|| self.change_xattr(caller, ino, name, Some(value), mode, &ns))
            .await
    }

    /// Remove attribute `name`. `ENODATA` if absent.
    pub(crate) async fn do_removexattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
    ) -> FsResult<()> {
        let ns = namespace(name)?;
        self.ensure_writable()?;
        self.retrying(|| self.change_xattr(caller, ino, name, None, XattrMode::Replace, &ns))
            .await
    }

    async fn change_xattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
        mode: XattrMode,
        ns: &Namespace,
    ) -> FsResult<()> {
        let mut txn = self.begin(&[ino]).await?;
        let mut inode = Volume::inode_in(txn.as_mut(), ino).await?;
        check_write(caller, &inode, ns)?;
        let exists = txn.xattr(ino, name).await?.is_some();
        match mode {
            XattrMode::Create if exists => return Err(FsError::Exists),
            XattrMode::Replace if !exists => return Err(FsError::NoData),
            _ => {}
        }
        txn.set_xattr(ino, name, value).await?;
        inode.ctime = self.now();
        txn.put_inode(&inode).await?;
        self.commit(txn).await?;
        Ok(())
    }
}
