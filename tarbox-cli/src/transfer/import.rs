//! `tarbox import`: a tar stream or a local directory into a tenant.
//!
//! A reader thread turns the source into [`In`] messages; the async side makes the engine calls.
//! Existing regular files (and symlinks, special files) of the same path are replaced; a path
//! that exists with another file type is refused. Directories are merged, and get the archive's
//! attributes once everything inside them is written (writing inside changes their mtime).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use indicatif::{HumanBytes, ProgressBar};
use tar::EntryType;
use tarbox_fs::{FileAttr, FileType, FsError, Ino, SetAttr, TimeSet, Timestamp, XattrMode};
use tokio::sync::mpsc;

use super::{ImportArgs, Stopped, parse_pax_time, pick, progress, warn};
use crate::Context;
use crate::fs::{CHUNK, DIR_MODE, Tree, absolute, dev_join, fill, lossy, type_name};

/// What the reader thread hands the importer.
enum In {
    /// An entry; a regular file's data follows as `Data` messages and one `EndData`.
    Entry(Box<Item>),
    Data(Vec<u8>),
    EndData,
    /// Something in the source that cannot be imported and was left out.
    Warn(String),
    /// The source is complete.
    Finish,
}

/// One file of the source.
struct Item {
    /// Relative path, as found in the source.
    path: Vec<u8>,
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    atime: Option<Timestamp>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    /// Another name for the file at this relative path of the same source.
    HardLink(Vec<u8>),
    Fifo,
    CharDevice(u32),
    BlockDevice(u32),
}

pub async fn import(ctx: &Context, args: ImportArgs) -> Result<()> {
    // The source is checked before anything is written to the tenant.
    let source = open_source(&args.source)?;
    absolute(&args.into)?;
    let tree = Tree::open(ctx, args.tenant, None).await?;
    let result = import_into(&tree, source, &args.into).await;
    tree.close(result).await
}

enum Source {
    Tar(Box<dyn Read + Send>, String),
    Dir(PathBuf),
}

fn open_source(path: &Path) -> Result<Source> {
    if path.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            bail!("refusing to read a tar archive from a terminal: pipe one in or name a file");
        }
        return Ok(Source::Tar(
            Box::new(std::io::stdin()),
            "standard input".into(),
        ));
    }
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {shown}"))?;
    if meta.is_dir() {
        return Ok(Source::Dir(path.to_path_buf()));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {shown}"))?;
    Ok(Source::Tar(Box::new(file), shown))
}

async fn import_into(tree: &Tree, source: Source, into: &OsStr) -> Result<()> {
    let root = tree.mkdir_p(into).await?;
    let (tx, rx) = mpsc::channel(8);
    let from = match &source {
        Source::Tar(_, name) => name.clone(),
        Source::Dir(path) => path.display().to_string(),
    };
    let reader = std::thread::spawn(move || {
        let read = match source {
            Source::Tar(input, name) => read_tar(input, &name, &tx),
            Source::Dir(path) => read_dir(&path, &tx),
        };
        // A reader that fails says so by not sending `Finish`.
        read.and_then(|()| tx.blocking_send(In::Finish).map_err(|_| Stopped.into()))
    });
    let bar = progress("importing");
    let mut importer = Importer {
        tree,
        root,
        into: absolute(into)?.to_vec(),
        bar: &bar,
        rx,
        dirs: HashMap::new(),
        dir_attrs: Vec::new(),
        entries: 0,
        bytes: 0,
    };
    let applied = importer.run().await;
    let (entries, bytes) = (importer.entries, importer.bytes);
    drop(importer);
    let read = reader
        .join()
        .unwrap_or_else(|_| Err(anyhow!("the archive reader panicked")));
    bar.finish_and_clear();
    pick(applied, read)?;
    eprintln!(
        "imported {entries} entries ({}) from {from} into tenant {:?} at {}",
        HumanBytes(bytes),
        tree.tenant.as_str(),
        into.to_string_lossy()
    );
    Ok(())
}

/// The components of a path from the source, refusing any that would leave the import
/// directory.
fn relative(path: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!(
                "{}: refusing a path with `..` (it would leave the import directory)",
                lossy(path)
            ),
            c => out.push(c),
        }
    }
    Ok(out)
}

struct Importer<'a> {
    tree: &'a Tree,
    /// The directory imported into.
    root: FileAttr,
    /// Its path, for messages.
    into: Vec<u8>,
    bar: &'a ProgressBar,
    rx: mpsc::Receiver<In>,
    /// Directories already resolved or created, by relative path.
    dirs: HashMap<Vec<u8>, Ino>,
    /// Directories whose attributes are set at the end.
    dir_attrs: Vec<(Ino, Box<Item>, String)>,
    entries: u64,
    bytes: u64,
}

impl Importer<'_> {
    async fn run(&mut self) -> Result<()> {
        loop {
            match self.rx.recv().await {
                Some(In::Entry(item)) => {
                    self.item(item).await?;
                    self.entries += 1;
                    self.bar.inc(1);
                }
                Some(In::Warn(w)) => warn(self.bar, &w),
                Some(In::Finish) => break,
                Some(In::Data(_) | In::EndData) => {
                    bail!("internal error: file data outside an entry")
                }
                None => return Err(Stopped.into()),
            }
        }
        // Deepest first, though setting a directory's attributes changes only its own ctime.
        for (ino, item, shown) in std::mem::take(&mut self.dir_attrs).iter().rev() {
            self.attrs(*ino, item, shown).await?;
        }
        Ok(())
    }

    /// The path of `components` inside the tenant, for messages.
    fn shown(&self, components: &[&[u8]]) -> String {
        let mut p = self.into.clone();
        for c in components {
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(c);
        }
        lossy(&p).into_owned()
    }

    async fn item(&mut self, item: Box<Item>) -> Result<()> {
        let path = item.path.clone();
        let comps = relative(&path)?;
        let shown = self.shown(&comps);
        let tree = self.tree;
        let (me, v) = (&tree.me, &tree.v);
        let at = |e: FsError| anyhow!("{shown}: {e}");
        let Some((name, parents)) = comps.split_last() else {
            // `./` in an archive: the import directory itself.
            if item.kind == Kind::Dir {
                self.dir_attrs.push((self.root.ino, item, shown));
                return Ok(());
            }
            bail!("{}: an archive entry without a file name", lossy(&path));
        };
        let parent = self.dir(parents).await?;
        let existing = match v.lookup(me, parent, name).await {
            Ok(a) => Some(a),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(at(e)),
        };
        let refuse = |a: &FileAttr, wanted: &str| {
            anyhow!(
                "{shown}: exists as a {}, not a {wanted}; import replaces only files of the same type",
                type_name(a.kind)
            )
        };
        match &item.kind {
            Kind::Dir => {
                let ino = match existing {
                    Some(a) if a.kind == FileType::Directory => a.ino,
                    Some(a) => return Err(refuse(&a, "directory")),
                    None => v.mkdir(me, parent, name, DIR_MODE).await.map_err(at)?.ino,
                };
                self.dirs.insert(comps.join(&b'/'), ino);
                self.dir_attrs.push((ino, item, shown));
            }
            Kind::File => {
                let flags = libc::O_WRONLY | libc::O_TRUNC;
                let (ino, fh) = match existing {
                    Some(a) if a.kind == FileType::Regular => {
                        (a.ino, v.open(me, a.ino, flags).await.map_err(at)?)
                    }
                    Some(a) => return Err(refuse(&a, "regular file")),
                    None => {
                        let (a, fh) = v
                            .create(me, parent, name, item.perm, flags | libc::O_EXCL)
                            .await
                            .map_err(at)?;
                        (a.ino, fh)
                    }
                };
                let copied = self.data(fh).await;
                let released = v.release(me, fh).await;
                copied.with_context(|| format!("cannot write {shown}"))?;
                released.map_err(|e| anyhow!("cannot write {shown}: {e}"))?;
                self.attrs(ino, &item, &shown).await?;
            }
            Kind::Symlink(target) => {
                match existing {
                    Some(a) if a.kind == FileType::Symlink => {
                        v.unlink(me, parent, name).await.map_err(at)?;
                    }
                    Some(a) => return Err(refuse(&a, "symbolic link")),
                    None => {}
                }
                let a = v.symlink(me, parent, name, target).await.map_err(at)?;
                self.attrs(a.ino, &item, &shown).await?;
            }
            Kind::HardLink(target) => {
                let target_comps = relative(target)?;
                let target_shown = self.shown(&target_comps);
                let found = tree
                    .lookup_from(self.root.clone(), &target_comps.join(&b'/'), false)
                    .await
                    .map_err(|e| anyhow!("{shown}: hard link to {target_shown}: {e}"))?;
                match existing {
                    Some(a) if a.ino == found.ino => return Ok(()),
                    Some(a) if a.kind == found.kind && a.kind != FileType::Directory => {
                        v.unlink(me, parent, name).await.map_err(at)?;
                    }
                    Some(a) => return Err(refuse(&a, type_name(found.kind))),
                    None => {}
                }
                v.link(me, found.ino, parent, name)
                    .await
                    .map_err(|e| anyhow!("{shown}: hard link to {target_shown}: {e}"))?;
            }
            Kind::Fifo | Kind::CharDevice(_) | Kind::BlockDevice(_) => {
                let (kind, rdev) = match item.kind {
                    Kind::CharDevice(r) => (FileType::CharDevice, r),
                    Kind::BlockDevice(r) => (FileType::BlockDevice, r),
                    _ => (FileType::Fifo, 0),
                };
                match existing {
                    Some(a) if a.kind == kind => v.unlink(me, parent, name).await.map_err(at)?,
                    Some(a) => return Err(refuse(&a, type_name(kind))),
                    None => {}
                }
                let mode = kind.mode_bits() | item.perm;
                let a = v.mknod(me, parent, name, mode, rdev).await.map_err(at)?;
                self.attrs(a.ino, &item, &shown).await?;
            }
        }
        Ok(())
    }

    /// The directory at relative `components`, created (mode 755) where missing. Symlinks are
    /// not followed: an archive cannot write outside the import directory through one.
    async fn dir(&mut self, components: &[&[u8]]) -> Result<Ino> {
        if components.is_empty() {
            return Ok(self.root.ino);
        }
        let key = components.join(&b'/');
        if let Some(ino) = self.dirs.get(&key) {
            return Ok(*ino);
        }
        let Some((name, parents)) = components.split_last() else {
            return Ok(self.root.ino);
        };
        let parent = Box::pin(self.dir(parents)).await?;
        let shown = self.shown(components);
        let tree = self.tree;
        let (me, v) = (&tree.me, &tree.v);
        let ino = match v.lookup(me, parent, name).await {
            Ok(a) if a.kind == FileType::Directory => a.ino,
            Ok(a) => bail!(
                "{shown}: exists as a {}, not a directory; import replaces only files of the same type",
                type_name(a.kind)
            ),
            Err(FsError::NotFound) => {
                v.mkdir(me, parent, name, DIR_MODE)
                    .await
                    .map_err(|e| anyhow!("{shown}: {e}"))?
                    .ino
            }
            Err(e) => bail!("{shown}: {e}"),
        };
        self.dirs.insert(key, ino);
        Ok(ino)
    }

    /// Write the `Data` messages of the current entry through `fh`.
    async fn data(&mut self, fh: tarbox_fs::FileHandle) -> Result<()> {
        let mut offset = 0u64;
        loop {
            match self.rx.recv().await {
                Some(In::Data(chunk)) => {
                    self.tree.write_at(fh, offset, &chunk).await?;
                    offset += chunk.len() as u64;
                    self.bytes += chunk.len() as u64;
                    self.bar.set_message(HumanBytes(self.bytes).to_string());
                }
                Some(In::EndData) => return Ok(()),
                Some(In::Warn(w)) => warn(self.bar, &w),
                Some(In::Entry(_) | In::Finish) => bail!("internal error: file data cut short"),
                None => return Err(Stopped.into()),
            }
        }
    }

    /// Give `ino` the item's owner, mode (not for symlinks), times and extended attributes.
    async fn attrs(&self, ino: Ino, item: &Item, shown: &str) -> Result<()> {
        let (me, v) = (&self.tree.me, &self.tree.v);
        for (name, value) in &item.xattrs {
            match v.setxattr(me, ino, name, value, XattrMode::Any).await {
                Ok(()) => {}
                Err(e @ (FsError::NotSupported(_) | FsError::NotPermitted)) => warn(
                    self.bar,
                    &format!("{shown}: extended attribute {} not kept: {e}", lossy(name)),
                ),
                Err(e) => bail!("{shown}: extended attribute {}: {e}", lossy(name)),
            }
        }
        let symlink = matches!(item.kind, Kind::Symlink(_));
        let set = SetAttr {
            mode: (!symlink).then_some(item.perm),
            uid: Some(item.uid),
            gid: Some(item.gid),
            atime: Some(TimeSet::At(item.atime.unwrap_or(item.mtime))),
            mtime: Some(TimeSet::At(item.mtime)),
            ..SetAttr::default()
        };
        v.setattr(me, ino, &set)
            .await
            .map_err(|e| anyhow!("{shown}: cannot set attributes: {e}"))?;
        Ok(())
    }
}

fn send(tx: &mpsc::Sender<In>, msg: In) -> Result<()> {
    tx.blocking_send(msg).map_err(|_| Stopped.into())
}

/// Send `input`'s bytes as `Data` messages of [`CHUNK`] bytes, then `EndData`.
fn send_data(input: &mut dyn Read, tx: &mpsc::Sender<In>) -> std::io::Result<Result<()>> {
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = fill(input, &mut buf)?;
        if n == 0 {
            return Ok(send(tx, In::EndData));
        }
        buf.truncate(n);
        if let Err(e) = send(tx, In::Data(buf)) {
            return Ok(Err(e));
        }
    }
}

fn timestamp(secs: i64, nanos: i64) -> Timestamp {
    Timestamp(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// The reader thread for a tar stream.
fn read_tar(input: Box<dyn Read + Send>, name: &str, tx: &mpsc::Sender<In>) -> Result<()> {
    let mut archive = tar::Archive::new(input);
    let entries = archive
        .entries()
        .with_context(|| format!("cannot read the tar archive {name}"))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("cannot read the tar archive {name}"))?;
        let path = entry.path_bytes().into_owned();
        let shown = lossy(&path).into_owned();
        let bad = || format!("{name}: cannot read the entry {shown}");
        let header = entry.header();
        let entry_type = header.entry_type();
        let perm = header.mode().with_context(bad)? & 0o7777;
        let uid = header.uid().with_context(bad)?;
        let gid = header.gid().with_context(bad)?;
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => (u, g),
            _ => bail!("{name}: {shown}: owner {uid}:{gid} out of range"),
        };
        let mtime = header.mtime().with_context(bad)?;
        let mut mtime = timestamp(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        // Only device entries have meaningful device fields (others may hold anything).
        let device = || -> Result<u32> {
            let major = header.device_major().with_context(bad)?.unwrap_or(0);
            let minor = header.device_minor().with_context(bad)?.unwrap_or(0);
            Ok(dev_join(major, minor))
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let needs_link = || {
            link.clone()
                .filter(|l| !l.is_empty())
                .with_context(|| format!("{name}: {shown}: a link without a target"))
        };
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
                if path.ends_with(b"/") =>
            {
                Kind::Dir
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink(needs_link()?),
            EntryType::Link => Kind::HardLink(needs_link()?),
            EntryType::Fifo => Kind::Fifo,
            EntryType::Char => Kind::CharDevice(device()?),
            EntryType::Block => Kind::BlockDevice(device()?),
            EntryType::XGlobalHeader => continue,
            other => {
                send(
                    tx,
                    In::Warn(format!(
                        "{shown}: tar entry type {:?} not supported; skipped",
                        other.as_byte() as char
                    )),
                )?;
                continue;
            }
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().with_context(bad)? {
            for ext in extensions {
                let ext = ext.with_context(bad)?;
                let (key, value) = (ext.key_bytes(), ext.value_bytes());
                if key == b"mtime" {
                    mtime = parse_pax_time(value).unwrap_or(mtime);
                } else if key == b"atime" {
                    atime = parse_pax_time(value);
                } else if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((attr.to_vec(), value.to_vec()));
                }
            }
        }
        let is_file = kind == Kind::File;
        let item = Item {
            path,
            kind,
            perm,
            uid,
            gid,
            mtime,
            atime,
            xattrs,
        };
        send(tx, In::Entry(Box::new(item)))?;
        if is_file {
            send_data(&mut entry, tx).with_context(|| format!("{name}: cannot read {shown}"))??;
        }
    }
    Ok(())
}

/// The reader thread for a local directory: its contents, depth first in name order.
fn read_dir(root: &Path, tx: &mpsc::Sender<In>) -> Result<()> {
    let mut links = HashMap::new();
    walk_local(root, &[], tx, &mut links)
}

fn walk_local(
    dir: &Path,
    rel: &[u8],
    tx: &mpsc::Sender<In>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<()> {
    let listing = std::fs::read_dir(dir)
        .and_then(|it| {
            it.map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<OsString>>>()
        })
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    let mut names = listing;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let shown = path.display().to_string();
        let mut relp = rel.to_vec();
        if !relp.is_empty() {
            relp.push(b'/');
        }
        relp.extend_from_slice(name.as_bytes());
        let meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("cannot read {shown}"))?;
        let ft = meta.file_type();
        let mut kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).with_context(|| format!("cannot read {shown}"))?;
            Kind::Symlink(target.into_os_string().into_vec())
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = local_dev_split(meta.rdev());
            if ft.is_char_device() {
                Kind::CharDevice(dev_join(major, minor))
            } else {
                Kind::BlockDevice(dev_join(major, minor))
            }
        } else {
            send(
                tx,
                In::Warn(format!("{shown}: sockets cannot be imported; skipped")),
            )?;
            continue;
        };
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            match links.get(&key) {
                Some(first) => kind = Kind::HardLink(first.clone()),
                None => {
                    links.insert(key, relp.clone());
                }
            }
        }
        let xattrs = if matches!(kind, Kind::HardLink(_)) {
            Vec::new()
        } else {
            local_xattrs(&path)
                .with_context(|| format!("cannot read the extended attributes of {shown}"))?
        };
        let is_file = kind == Kind::File;
        let is_dir = kind == Kind::Dir;
        let item = Item {
            path: relp.clone(),
            kind,
            perm: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: timestamp(meta.mtime(), meta.mtime_nsec()),
            atime: Some(timestamp(meta.atime(), meta.atime_nsec())),
            xattrs,
        };
        send(tx, In::Entry(Box::new(item)))?;
        if is_file {
            let mut file =
                std::fs::File::open(&path).with_context(|| format!("cannot open {shown}"))?;
            send_data(&mut file, tx).with_context(|| format!("cannot read {shown}"))??;
        }
        if is_dir {
            walk_local(&path, &relp, tx, links)?;
        }
    }
    Ok(())
}

/// Extended attributes of a local file (none where the filesystem has none).
fn local_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e)
            if e.kind() == std::io::ErrorKind::Unsupported
                || e.raw_os_error() == Some(libc::ENOTSUP) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    Ok(out)
}

/// Major and minor numbers of a local `st_rdev` (glibc's 64-bit encoding).
fn local_dev_split(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn archive_paths_stay_inside() {
        assert_eq!(relative(b"./a//b/").expect("plain"), [&b"a"[..], b"b"]);
        assert_eq!(relative(b"/abs/x").expect("absolute"), [&b"abs"[..], b"x"]);
        assert!(relative(b"./").expect("root").is_empty());
        let err = relative(b"a/../../etc/passwd")
            .expect_err("escapes")
            .to_string();
        assert!(err.contains("a/../../etc/passwd"), "{err}");
    }

    /// Archive paths as an attacker writes them: any bytes, or `..`, `.`, empty and plain
    /// components joined by `/`.
    fn archive_path() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            Just(b"..".to_vec()),
            Just(b".".to_vec()),
            Just(Vec::new()),
            Just(b"etc".to_vec()),
        ];
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(part, 0..8).prop_map(|parts| parts.join(&b'/')),
        ]
    }

    proptest! {
        /// Any path bytes an archive may hold: components that stay inside the import
        /// directory, or a refusal that names the path.
        #[test]
        fn any_archive_path_stays_inside_or_is_refused(path in archive_path()) {
            match relative(&path) {
                Ok(parts) => {
                    for part in parts {
                        prop_assert!(!part.is_empty() && part != b"." && part != b"..");
                        prop_assert!(!part.contains(&b'/'));
                    }
                }
                Err(e) => {
                    prop_assert!(path.split(|b| *b == b'/').any(|c| c == b".."));
                    prop_assert!(e.to_string().contains("refusing a path with `..`"));
                }
            }
        }
    }

    #[test]
    fn local_device_numbers() {
        // /dev/null is (1, 3); a large minor uses the high bits.
        assert_eq!(local_dev_split(0x103), (1, 3));
        assert_eq!(
            local_dev_split((259 << 8) | (0x12345 & 0xff) | ((0x12345 & !0xff) << 12)),
            (259, 0x12345)
        );
    }
}
