//! A tenant's tree opened for the file commands, export and import: path resolution by
//! `lookup` from the root, directory listings, and chunked reads and writes that release their
//! handles on every path.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context as _, Result, anyhow, bail};
use std::sync::Arc;

use tarbox_fs::{
    Caller, DirEntry, Engine, FileAttr, FileHandle, FileType, Filesystem, FsError, FsResult, Ino,
    VolumeOptions, paths,
};

use crate::Context;

/// Reads and writes move this much at a time.
pub(crate) const CHUNK: usize = 1 << 20;
/// Modes of what the commands create (the engine applies no umask).
pub(crate) const DIR_MODE: u32 = 0o755;
pub(super) const FILE_MODE: u32 = 0o644;

/// A path for messages.
pub(crate) fn lossy(path: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(path)
}

pub(super) use tarbox_fs::paths::components;

/// A tenant's tree opened for file commands, as the superuser.
pub(crate) struct Tree {
    engine: Engine,
    /// The tree, as every frontend sees one.
    pub(crate) v: Arc<dyn Filesystem>,
    pub(crate) tenant: String,
    pub(crate) me: Caller,
}

impl Tree {
    /// Open `tenant` (default: the config file's), or its checkpoint `layer` read-only.
    pub(crate) async fn open(
        ctx: &Context,
        tenant: Option<String>,
        layer: Option<String>,
    ) -> Result<Tree> {
        let Some(tenant) = tenant.or_else(|| ctx.file.tenant.clone()) else {
            bail!("no tenant given: pass --tenant NAME (or set `tenant` in the config file)");
        };
        let engine = ctx.engine().await?;
        let options = VolumeOptions {
            layer: layer.map(tarbox_fs::LayerRef::from),
            mount: Some(format!("{}:cli", tarbox_fs::audit::host_name())),
            ..VolumeOptions::default()
        };
        let v = engine
            .volume_with(&tenant, options)
            .await
            .with_context(|| format!("cannot open tenant {tenant:?}"))?;
        Ok(Tree {
            engine,
            v: Arc::new(v),
            tenant,
            // Administrators act as root inside the tenant; the audit trail names this process.
            me: Caller {
                pid: std::process::id(),
                ..Caller::root()
            },
        })
    }

    /// Flush and end the engine session, then return the command's `result` (whose error wins).
    pub(crate) async fn close(self, result: Result<()>) -> Result<()> {
        let flushed = self.v.sync_all().await;
        let closed = self.engine.close().await;
        result?;
        flushed.context("cannot flush buffered writes")?;
        closed.context("cannot end the storage session")?;
        Ok(())
    }

    /// Resolve an absolute path from the root (see [`tarbox_fs::paths`]).
    pub(crate) async fn lookup_path(&self, path: &[u8], follow: bool) -> FsResult<FileAttr> {
        paths::resolve(self.v.as_ref(), &self.me, path, follow).await
    }

    /// Like [`Tree::lookup_path`] from `start` (a directory) for a relative path.
    pub(crate) async fn lookup_from(
        &self,
        start: FileAttr,
        path: &[u8],
        follow: bool,
    ) -> FsResult<FileAttr> {
        paths::resolve_from(self.v.as_ref(), &self.me, start, path, follow).await
    }

    /// [`Tree::lookup_path`] for a path given on the command line; errors name it.
    pub(crate) async fn resolve(&self, path: &OsStr, follow: bool) -> Result<FileAttr> {
        let bytes = absolute(path)?;
        self.lookup_path(bytes, follow)
            .await
            .map_err(|e| anyhow!("{}: {e}", path.to_string_lossy()))
    }

    /// The directory holding the last component of `path`, and that component.
    pub(crate) async fn parent(&self, path: &OsStr) -> Result<(FileAttr, Vec<u8>)> {
        let bytes = absolute(path)?;
        let shown = path.to_string_lossy();
        if paths::split_last(bytes).is_none() {
            bail!("{shown}: not allowed on the root directory");
        }
        let (dir, name) = paths::resolve_parent(self.v.as_ref(), &self.me, bytes)
            .await
            .map_err(|e| anyhow!("{shown}: {e}"))?;
        Ok((dir, name.to_vec()))
    }

    /// Every entry of directory `dir` except `.` and `..`, sorted by name, with attributes.
    pub(crate) async fn list(&self, dir: Ino) -> FsResult<Vec<(DirEntry, FileAttr)>> {
        paths::list_dir(self.v.as_ref(), &self.me, dir).await
    }

    /// Read regular file `ino` from its start in [`CHUNK`]s, handing each to `sink`, up to
    /// `limit` bytes if given. Returns the bytes read. The handle is released on every path.
    pub(crate) async fn read_file(
        &self,
        ino: Ino,
        limit: Option<u64>,
        mut sink: impl AsyncFnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let fh = self.v.open(&self.me, ino, libc::O_RDONLY).await?;
        let copied: Result<u64> = async {
            let mut offset = 0u64;
            loop {
                let want = match limit {
                    Some(l) => (l - offset).min(CHUNK as u64),
                    None => CHUNK as u64,
                };
                if want == 0 {
                    return Ok(offset);
                }
                let chunk = self.v.read(&self.me, fh, offset, want as u32).await?;
                if chunk.is_empty() {
                    return Ok(offset);
                }
                offset += chunk.len() as u64;
                sink(&chunk).await?;
            }
        }
        .await;
        let released = self.v.release(&self.me, fh).await;
        let n = copied?;
        released?;
        Ok(n)
    }

    /// Write all of `data` at `offset` through `fh`.
    pub(crate) async fn write_at(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let n = self
                .v
                .write(&self.me, fh, offset + done as u64, &data[done..])
                .await?;
            if n == 0 {
                bail!("the engine accepted no bytes");
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Copy `input` to `fh` from offset 0 in [`CHUNK`]s. Returns the bytes copied.
    pub(super) async fn copy_in(
        &self,
        fh: FileHandle,
        input: &mut dyn Read,
        shown: &str,
    ) -> Result<u64> {
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0u64;
        loop {
            let n = fill(input, &mut buf).with_context(|| format!("cannot read {shown}"))?;
            if n == 0 {
                return Ok(offset);
            }
            self.write_at(fh, offset, &buf[..n]).await?;
            offset += n as u64;
        }
    }

    /// Make `path` and its missing parents directories (`mkdir -p`). Returns the last one.
    pub(crate) async fn mkdir_p(&self, path: &OsStr) -> Result<FileAttr> {
        let bytes = absolute(path)?;
        let shown = path.to_string_lossy();
        let mut cur = self.v.getattr(&self.me, Ino::ROOT).await?;
        let mut walked = Vec::new();
        for name in components(bytes) {
            walked.push(b'/');
            walked.extend_from_slice(name);
            let at = |e: FsError| anyhow!("{}: {e}", lossy(&walked));
            let found = match self.v.lookup(&self.me, cur.ino, name).await {
                // An existing symlink to a directory is used, as `mkdir -p` does.
                Ok(a) if a.kind == FileType::Symlink => Some(
                    self.lookup_from(cur.clone(), name, true)
                        .await
                        .map_err(at)?,
                ),
                Ok(a) => Some(a),
                Err(FsError::NotFound) => None,
                Err(e) => return Err(at(e)),
            };
            cur = match found {
                Some(a) if a.kind == FileType::Directory => a,
                Some(_) => bail!("{}: exists and is not a directory", lossy(&walked)),
                None => match self.v.mkdir(&self.me, cur.ino, name, DIR_MODE).await {
                    Ok(a) => a,
                    // Created concurrently by someone else: use it.
                    Err(FsError::Exists) => {
                        self.v.lookup(&self.me, cur.ino, name).await.map_err(at)?
                    }
                    Err(e) => return Err(at(e)),
                },
            };
        }
        if cur.kind != FileType::Directory {
            bail!("{shown}: {}", FsError::NotDir);
        }
        Ok(cur)
    }
}

/// The bytes of an absolute path given on the command line.
pub(crate) fn absolute(path: &OsStr) -> Result<&[u8]> {
    let bytes = path.as_bytes();
    if !bytes.starts_with(b"/") {
        bail!(
            "{}: paths inside a tenant are absolute; did you mean /{}?",
            path.to_string_lossy(),
            path.to_string_lossy()
        );
    }
    Ok(bytes)
}

/// Read from `input` until `buf` is full or the input ends.
pub(crate) fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Major and minor device numbers of an engine `rdev` (the kernel's 32-bit encoding).
pub(crate) fn dev_split(rdev: u32) -> (u32, u32) {
    (
        (rdev & 0xfff00) >> 8,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

/// The engine `rdev` of a major and minor device number.
pub(crate) fn dev_join(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// `dir/name`.
pub(super) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip() {
        for (ma, mi) in [(1, 3), (8, 17), (259, 65536), (4095, 0xfffff)] {
            assert_eq!(dev_split(dev_join(ma, mi)), (ma, mi));
        }
        // The kernel's encoding of /dev/null (1, 3).
        assert_eq!(dev_join(1, 3), 0x103);
    }

    #[test]
    fn paths_split_into_components() {
        let c: Vec<&[u8]> = components(b"/a//b/./c/").collect();
        assert_eq!(c, [&b"a"[..], b"b", b"c"]);
        assert!(absolute(OsStr::new("relative")).is_err());
    }
}
