//! `tarbox export` and `tarbox import`: a tenant's tree as a tar stream, and a tar stream or a
//! local directory into a tenant.
//!
//! The tar side is synchronous (the `tar` crate) and runs on its own thread; the engine side is
//! async. They talk through a bounded channel, so a file moves in 1 MiB chunks and is never held
//! whole in memory. Each side ends the stream with an explicit `Finish`: a side that goes away
//! without it failed, and the other side's error (naming the path) is the one reported.

mod import;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tar::{EntryType, Header};
use tarbox_fs::{FileAttr, FileType, FsError, Ino, Timestamp};
use tokio::sync::mpsc;

use crate::Context;
use crate::fs::{CHUNK, Tree, dev_split, lossy};

pub use import::import;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Tenant (default: the config file's `tenant`).
    #[arg(long, short = 't')]
    tenant: Option<String>,
    /// Export the tree as it was at this checkpoint (name or id) instead of the current one.
    /// The current tree is read as it changes: checkpoint a tree in use for a consistent archive.
    #[arg(long, value_name = "NAME")]
    layer: Option<String>,
    /// Write the archive to FILE (`-`: standard output, the default).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Tenant (default: the config file's `tenant`).
    #[arg(long, short = 't')]
    tenant: Option<String>,
    /// A tar archive, `-` for a tar stream on standard input, or a local directory (its
    /// contents are imported, not the directory itself).
    source: PathBuf,
    /// Directory inside the tenant to import into; created if missing.
    #[arg(long, value_name = "PATH", default_value = "/")]
    into: OsString,
}

/// The other side of a transfer went away before the end of the stream: it failed, and its
/// error is the one to report.
#[derive(Debug)]
struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the transfer stopped")
    }
}

impl std::error::Error for Stopped {}

/// The error to report of two sides of a transfer: `primary`'s, unless it only says that
/// `other` stopped.
fn pick(primary: Result<()>, other: Result<()>) -> Result<()> {
    match (primary, other) {
        (Err(p), Err(o)) if p.is::<Stopped>() => Err(o),
        (Err(p), _) => Err(p),
        (Ok(()), other) => other,
    }
}

/// A spinner on stderr counting entries and bytes (indicatif hides it when stderr is not a
/// terminal).
fn progress(what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {prefix} {pos} entries, {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_prefix(what);
    bar.set_message("0 B");
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Print a warning above the progress bar.
fn warn(bar: &ProgressBar, message: &str) {
    bar.suspend(|| eprintln!("tarbox: warning: {message}"));
}

/// A PAX time value (`secs.nanos`, possibly negative).
fn pax_time(t: Timestamp) -> Vec<u8> {
    let sign = if t.0 < 0 { "-" } else { "" };
    let abs = t.0.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000).into_bytes()
}

/// Parse a PAX time value (`1700000000`, `1700000000.5`, `-1.25`).
fn parse_pax_time(text: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(text).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    let total = secs.checked_mul(1_000_000_000)?.checked_add(nanos)?;
    Some(Timestamp(if negative { -total } else { total }))
}

// ---------------------------------------------------------------------------------------------
// Export

/// What the tree walk hands the archive writer.
enum Out {
    /// An entry; a regular file's data follows as `Data` messages.
    Entry(Box<OutEntry>),
    Data(Vec<u8>),
    /// The walk is complete: finish the archive.
    Finish,
}

struct OutEntry {
    header: Header,
    /// Relative path in the archive.
    path: Vec<u8>,
    /// Symlink target or hard-link target path.
    link: Option<Vec<u8>>,
    pax: Vec<(String, Vec<u8>)>,
}

pub async fn export(ctx: &Context, args: ExportArgs) -> Result<()> {
    let file = args.output.filter(|p| p.as_os_str() != "-");
    if file.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a tar archive to a terminal: pass -o FILE or redirect stdout");
    }
    let tree = Tree::open(ctx, args.tenant, args.layer).await?;
    let result = export_tree(&tree, file.as_deref()).await;
    if result.is_err() {
        if let Some(path) = &file {
            // A partial archive must not pass for a complete one.
            let _ = std::fs::remove_file(path);
        }
    }
    tree.close(result).await
}

async fn export_tree(tree: &Tree, file: Option<&Path>) -> Result<()> {
    let sink: Box<dyn Write + Send> = match file {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let bar = progress("exporting");
    let (tx, rx) = mpsc::channel(8);
    let writer = std::thread::spawn(move || write_archive(sink, rx));
    let mut walk = Walk {
        tree,
        tx: &tx,
        bar: &bar,
        links: HashMap::new(),
        entries: 0,
        bytes: 0,
    };
    let mut walked = walk.dir(Ino::ROOT, b"").await;
    if walked.is_ok() {
        walked = tx.send(Out::Finish).await.map_err(|_| Stopped.into());
    }
    let (entries, bytes) = (walk.entries, walk.bytes);
    drop(tx);
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(anyhow!("the archive writer panicked")));
    bar.finish_and_clear();
    pick(walked, written)?;
    let to = file.map_or("standard output".into(), |p| p.display().to_string());
    eprintln!(
        "exported {entries} entries ({}) of tenant {:?} to {to}",
        HumanBytes(bytes),
        tree.tenant.as_str()
    );
    Ok(())
}

/// The depth-first walk of an export, in name order, directories before their contents.
struct Walk<'a> {
    tree: &'a Tree,
    tx: &'a mpsc::Sender<Out>,
    bar: &'a ProgressBar,
    /// First archive path of every multiply-linked inode seen so far.
    links: HashMap<Ino, Vec<u8>>,
    entries: u64,
    bytes: u64,
}

impl Walk<'_> {
    async fn dir(&mut self, dir: Ino, prefix: &[u8]) -> Result<()> {
        let entries = self
            .tree
            .list(dir)
            .await
            .map_err(|e| anyhow!("/{}: {e}", lossy(prefix)))?;
        for (e, attr) in entries {
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            self.entry(&path, &attr).await?;
            if attr.kind == FileType::Directory {
                Box::pin(self.dir(attr.ino, &path)).await?;
            }
        }
        Ok(())
    }

    async fn send(&self, msg: Out) -> Result<()> {
        self.tx.send(msg).await.map_err(|_| Stopped.into())
    }

    async fn entry(&mut self, path: &[u8], a: &FileAttr) -> Result<()> {
        let shown = format!("/{}", lossy(path));
        let at = |e: FsError| anyhow!("{shown}: {e}");
        let mut header = Header::new_gnu();
        header.set_size(0);
        if !matches!(a.kind, FileType::Directory | FileType::Socket) && a.nlink > 1 {
            if let Some(first) = self.links.get(&a.ino) {
                header.set_entry_type(EntryType::Link);
                header.set_mode(u32::from(a.perm));
                header.set_uid(a.uid.into());
                header.set_gid(a.gid.into());
                header.set_mtime(a.mtime.secs_nanos().0.max(0) as u64);
                let link = first.clone();
                self.send(Out::Entry(Box::new(OutEntry {
                    header,
                    path: path.to_vec(),
                    link: Some(link),
                    pax: Vec::new(),
                })))
                .await?;
                self.entries += 1;
                self.bar.inc(1);
                return Ok(());
            }
            self.links.insert(a.ino, path.to_vec());
        }
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut link = None;
        let kind = match a.kind {
            FileType::Directory => EntryType::Directory,
            FileType::Regular => {
                header.set_size(a.size);
                EntryType::Regular
            }
            FileType::Symlink => {
                let target = self
                    .tree
                    .v
                    .readlink(&self.tree.me, a.ino)
                    .await
                    .map_err(at)?;
                // The header's link field is normalized by the tar crate; the PAX record keeps
                // the target byte for byte.
                pax.push(("linkpath".into(), target.clone()));
                link = Some(target);
                EntryType::Symlink
            }
            FileType::CharDevice | FileType::BlockDevice => {
                let (major, minor) = dev_split(a.rdev);
                header
                    .set_device_major(major)
                    .and_then(|()| header.set_device_minor(minor))
                    .with_context(|| format!("{shown}: cannot store the device number"))?;
                if a.kind == FileType::CharDevice {
                    EntryType::Char
                } else {
                    EntryType::Block
                }
            }
            FileType::Fifo => EntryType::Fifo,
            FileType::Socket => {
                warn(
                    self.bar,
                    &format!("{shown}: tar cannot hold a socket; skipped"),
                );
                return Ok(());
            }
        };
        header.set_entry_type(kind);
        header.set_mode(u32::from(a.perm));
        header.set_uid(a.uid.into());
        header.set_gid(a.gid.into());
        let (secs, nanos) = a.mtime.secs_nanos();
        header.set_mtime(secs.max(0) as u64);
        if nanos != 0 || secs < 0 {
            pax.push(("mtime".into(), pax_time(a.mtime)));
        }
        let mut names = self
            .tree
            .v
            .listxattr(&self.tree.me, a.ino)
            .await
            .map_err(at)?;
        names.sort();
        for name in names {
            let value = self
                .tree
                .v
                .getxattr(&self.tree.me, a.ino, &name)
                .await
                .map_err(at)?;
            let Ok(name) = String::from_utf8(name) else {
                bail!("{shown}: an extended attribute name is not UTF-8, which tar cannot hold");
            };
            pax.push((format!("SCHILY.xattr.{name}"), value));
        }
        self.send(Out::Entry(Box::new(OutEntry {
            header,
            path: path.to_vec(),
            link,
            pax,
        })))
        .await?;
        if kind == EntryType::Regular {
            let (tx, bar) = (self.tx, self.bar);
            let mut bytes = self.bytes;
            let read = self
                .tree
                .read_file(a.ino, Some(a.size), async |chunk: &[u8]| {
                    tx.send(Out::Data(chunk.to_vec()))
                        .await
                        .map_err(|_| anyhow::Error::new(Stopped))?;
                    bytes += chunk.len() as u64;
                    bar.set_message(HumanBytes(bytes).to_string());
                    Ok(())
                })
                .await
                .with_context(|| format!("cannot read {shown}"))?;
            self.bytes = bytes;
            if read < a.size {
                bail!("{shown}: the file shrank while it was exported; try again");
            }
        }
        self.entries += 1;
        self.bar.inc(1);
        Ok(())
    }
}

/// Discards writes once closed, so that an archive abandoned after an error does not get the
/// end-of-archive marker the tar builder writes when dropped.
struct Gate<W: Write> {
    inner: W,
    open: bool,
}

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.open {
            self.inner.write(buf)
        } else {
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.open {
            self.inner.flush()
        } else {
            Ok(())
        }
    }
}

/// The archive writer thread: turn the walk's messages into a tar stream on `sink`.
fn write_archive(sink: Box<dyn Write + Send>, mut rx: mpsc::Receiver<Out>) -> Result<()> {
    let mut builder = tar::Builder::new(Gate {
        inner: BufWriter::with_capacity(CHUNK, sink),
        open: true,
    });
    let result = write_entries(&mut builder, &mut rx);
    if result.is_err() {
        builder.get_mut().open = false;
    }
    result
}

fn write_entries(
    builder: &mut tar::Builder<Gate<BufWriter<Box<dyn Write + Send>>>>,
    rx: &mut mpsc::Receiver<Out>,
) -> Result<()> {
    while let Some(msg) = rx.blocking_recv() {
        let entry = match msg {
            Out::Entry(entry) => entry,
            Out::Finish => {
                builder.finish().context("cannot write the archive")?;
                builder
                    .get_mut()
                    .flush()
                    .context("cannot write the archive")?;
                return Ok(());
            }
            Out::Data(_) => bail!("internal error: file data outside an entry"),
        };
        let OutEntry {
            mut header,
            path,
            link,
            pax,
        } = *entry;
        let shown = format!("/{}", lossy(&path));
        let written = (|| -> std::io::Result<()> {
            if !pax.is_empty() {
                builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), &v[..])))?;
            }
            let name = Path::new(OsStr::from_bytes(&path));
            match &link {
                Some(target) => {
                    builder.append_link(&mut header, name, Path::new(OsStr::from_bytes(target)))
                }
                None => {
                    let left = header.size()?;
                    let data = DataIn {
                        rx: &mut *rx,
                        left,
                        buf: Vec::new(),
                        pos: 0,
                    };
                    builder.append_data(&mut header, name, data)
                }
            }
        })();
        written.with_context(|| format!("cannot write {shown} to the archive"))?;
    }
    Err(Stopped.into())
}

/// A regular file's data as the walk sends it, read by the tar builder.
struct DataIn<'a> {
    rx: &'a mut mpsc::Receiver<Out>,
    left: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for DataIn<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Out::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Some(_) => return Err(std::io::Error::other("internal error: missing file data")),
                None => return Err(std::io::Error::other(Stopped)),
            }
        }
        let n = out
            .len()
            .min(self.buf.len() - self.pos)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_round_trip() {
        for ns in [0, 1, 1_700_000_000_123_456_789, -1, -1_500_000_000] {
            let t = Timestamp(ns);
            assert_eq!(parse_pax_time(&pax_time(t)), Some(t), "{ns}");
        }
        assert_eq!(
            parse_pax_time(b"1700000000"),
            Some(Timestamp(1_700_000_000_000_000_000))
        );
        assert_eq!(parse_pax_time(b"12.5"), Some(Timestamp(12_500_000_000)));
        assert_eq!(parse_pax_time(b"soon"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }

    #[test]
    fn the_failing_side_is_reported() {
        let stopped = || Err(anyhow::Error::new(Stopped).context("cannot write /a"));
        let real = || Err(anyhow!("/b: byte quota exceeded"));
        let e = pick(stopped(), real()).expect_err("fails");
        assert!(e.to_string().contains("/b"), "{e}");
        let e = pick(real(), stopped()).expect_err("fails");
        assert!(e.to_string().contains("/b"), "{e}");
        assert!(pick(Ok(()), Ok(())).is_ok());
    }
}
