//! `tarbox fs …`: a tenant's files without a mount. Each command resolves its paths by `lookup`
//! from the root, one component at a time (following symlinks as the kernel would), and makes the
//! engine calls a mount would make; every POSIX rule stays in the engine.

mod show;
mod tree;

use std::ffi::{OsStr, OsString};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand};
use tarbox_fs::{FileAttr, FileType, FsError, Ino, RenameFlags};

use crate::{Context, Output};
pub(crate) use show::type_name;
use show::{StatJson, mode_string, xattr_text};
pub(crate) use tree::{CHUNK, DIR_MODE, Tree, absolute, dev_join, dev_split, fill, lossy};
use tree::{FILE_MODE, components, join};

#[derive(Debug, Args)]
pub struct FsArgs {
    /// Tenant (default: the config file's `tenant`).
    #[arg(long, short = 't', global = true)]
    tenant: Option<String>,
    #[command(subcommand)]
    command: FsCommand,
}

#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// List a directory (a file is shown by itself). Names are sorted bytewise.
    #[command(
        after_help = "Examples:\n  tarbox fs ls -t agent-1 /src\n  tarbox fs ls -t agent-1 -l /src\n  tarbox fs ls -t agent-1 --output json /\n  tarbox fs ls -t agent-1 --layer before-refactor /src"
    )]
    Ls {
        /// Long listing: type and permissions, links, owner, group, size, modification time.
        #[arg(short = 'l')]
        long: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Read the tree as it was at this checkpoint (name or id).
        #[arg(long, value_name = "NAME")]
        layer: Option<String>,
        /// Absolute path inside the tenant.
        #[arg(default_value = "/")]
        path: OsString,
    },
    /// Show a file's attributes and extended attributes (a symlink itself, not its target).
    #[command(
        after_help = "Examples:\n  tarbox fs stat -t agent-1 /src/main.rs\n  tarbox fs stat -t agent-1 --output json /src/main.rs"
    )]
    Stat {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Read the tree as it was at this checkpoint (name or id).
        #[arg(long, value_name = "NAME")]
        layer: Option<String>,
        path: OsString,
    },
    /// Write a file's contents to standard output.
    #[command(
        after_help = "Examples:\n  tarbox fs cat -t agent-1 /notes.txt\n  tarbox fs cat -t agent-1 --layer before-refactor /notes.txt"
    )]
    Cat {
        /// Read the tree as it was at this checkpoint (name or id).
        #[arg(long, value_name = "NAME")]
        layer: Option<String>,
        path: OsString,
    },
    /// Copy a local file (or standard input, `-`) into the tenant, creating or truncating REMOTE.
    /// When REMOTE is a directory the file keeps its local name inside it.
    #[command(
        after_help = "Examples:\n  tarbox fs put -t agent-1 ./model.bin /models/model.bin\n  echo hello | tarbox fs put -t agent-1 - /hello.txt"
    )]
    Put {
        /// Local file, or `-` for standard input.
        local: PathBuf,
        remote: OsString,
    },
    /// Copy a file out of the tenant to a local file (or standard output, `-`). When LOCAL is a
    /// directory the file keeps its name inside it.
    #[command(
        after_help = "Examples:\n  tarbox fs get -t agent-1 /models/model.bin ./model.bin\n  tarbox fs get -t agent-1 --layer v1 /config.toml -"
    )]
    Get {
        /// Read the tree as it was at this checkpoint (name or id).
        #[arg(long, value_name = "NAME")]
        layer: Option<String>,
        remote: OsString,
        /// Local file or directory, or `-` for standard output.
        local: PathBuf,
    },
    /// Create a directory.
    #[command(
        after_help = "Examples:\n  tarbox fs mkdir -t agent-1 /data\n  tarbox fs mkdir -t agent-1 -p /data/raw/2026"
    )]
    Mkdir {
        /// Create missing parents too; an existing directory is not an error.
        #[arg(short = 'p', long)]
        parents: bool,
        path: OsString,
    },
    /// Remove a file, symlink or special file; with -r also directories and everything in them.
    #[command(
        after_help = "Examples:\n  tarbox fs rm -t agent-1 /tmp/out.log\n  tarbox fs rm -t agent-1 -r /build"
    )]
    Rm {
        /// Remove directories and their contents.
        #[arg(short = 'r', long)]
        recursive: bool,
        path: OsString,
    },
    /// Rename or move FROM to TO (into TO when it is a directory); replaces an existing TO.
    #[command(
        after_help = "Examples:\n  tarbox fs mv -t agent-1 /draft.md /final.md\n  tarbox fs mv -t agent-1 /final.md /docs"
    )]
    Mv { from: OsString, to: OsString },
    /// Show a directory and everything below it as an indented tree.
    #[command(
        after_help = "Examples:\n  tarbox fs tree -t agent-1\n  tarbox fs tree -t agent-1 --layer before-refactor /src"
    )]
    Tree {
        /// Read the tree as it was at this checkpoint (name or id).
        #[arg(long, value_name = "NAME")]
        layer: Option<String>,
        #[arg(default_value = "/")]
        path: OsString,
    },
}

pub async fn run(ctx: &Context, args: FsArgs) -> Result<()> {
    let layer = match &args.command {
        FsCommand::Ls { layer, .. }
        | FsCommand::Stat { layer, .. }
        | FsCommand::Cat { layer, .. }
        | FsCommand::Get { layer, .. }
        | FsCommand::Tree { layer, .. } => layer.clone(),
        _ => None,
    };
    let tree = Tree::open(ctx, args.tenant, layer).await?;
    let result = match args.command {
        FsCommand::Ls {
            long, output, path, ..
        } => ls(&tree, &path, long, output).await,
        FsCommand::Stat { output, path, .. } => stat(&tree, &path, output).await,
        FsCommand::Cat { path, .. } => cat(&tree, &path).await,
        FsCommand::Put { local, remote } => put(&tree, &local, &remote).await,
        FsCommand::Get { remote, local, .. } => get(&tree, &remote, &local).await,
        FsCommand::Mkdir { parents, path } => mkdir(&tree, &path, parents).await,
        FsCommand::Rm { recursive, path } => rm(&tree, &path, recursive).await,
        FsCommand::Mv { from, to } => mv(&tree, &from, &to).await,
        FsCommand::Tree { path, .. } => print_tree(&tree, &path).await,
    };
    tree.close(result).await
}

/// Whether writing to standard output failed because the reader went away (`| head`): not an
/// error worth reporting.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

async fn ls(tree: &Tree, path: &OsStr, long: bool, output: Output) -> Result<()> {
    let shown = path.to_string_lossy();
    let mut attr = tree.resolve(path, false).await?;
    if attr.kind == FileType::Symlink {
        // A symlink to a directory lists the directory, as `ls` does.
        if let Ok(target) = tree.lookup_path(absolute(path)?, true).await {
            if target.kind == FileType::Directory {
                attr = target;
            }
        }
    }
    let base = absolute(path)?;
    let mut rows: Vec<(Vec<u8>, Vec<u8>, FileAttr)> = Vec::new();
    if attr.kind == FileType::Directory {
        let entries = tree
            .list(attr.ino)
            .await
            .map_err(|e| anyhow!("{shown}: {e}"))?;
        for (e, a) in entries {
            let full = join(base, &e.name);
            rows.push((e.name, full, a));
        }
    } else {
        let name = components(base).next_back().unwrap_or(b"/").to_vec();
        rows.push((name, base.to_vec(), attr));
    }
    let mut targets = Vec::with_capacity(rows.len());
    for (_, full, a) in &rows {
        targets.push(if a.kind == FileType::Symlink {
            Some(
                tree.v
                    .readlink(&tree.me, a.ino)
                    .await
                    .map_err(|e| anyhow!("{}: {e}", lossy(full)))?,
            )
        } else {
            None
        });
    }
    let mut out = std::io::stdout().lock();
    let printed: std::io::Result<()> = (|| {
        match output {
            Output::Json => {
                let json: Vec<StatJson> = rows
                    .iter()
                    .zip(&targets)
                    .map(|((name, full, a), t)| StatJson::new(name, full, a, t.as_deref()))
                    .collect();
                serde_json::to_writer_pretty(&mut out, &json)?;
                writeln!(out)?;
            }
            Output::Table if long => {
                for ((name, _, a), t) in rows.iter().zip(&targets) {
                    let size = match a.kind {
                        FileType::CharDevice | FileType::BlockDevice => {
                            let (ma, mi) = dev_split(a.rdev);
                            format!("{ma}, {mi}")
                        }
                        _ => a.size.to_string(),
                    };
                    write!(
                        out,
                        "{} {:>3} {:>5} {:>5} {:>12} {} {}",
                        mode_string(a.kind, a.perm),
                        a.nlink,
                        a.uid,
                        a.gid,
                        size,
                        a.mtime.to_rfc3339(),
                        lossy(name)
                    )?;
                    match t {
                        Some(t) => writeln!(out, " -> {}", lossy(t))?,
                        None => writeln!(out)?,
                    }
                }
            }
            Output::Table => {
                for (name, _, _) in &rows {
                    writeln!(out, "{}", lossy(name))?;
                }
            }
        }
        out.flush()
    })();
    match printed {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}

async fn stat(tree: &Tree, path: &OsStr, output: Output) -> Result<()> {
    let shown = path.to_string_lossy();
    let attr = tree.resolve(path, false).await?;
    let at = |e: FsError| anyhow!("{shown}: {e}");
    let target = if attr.kind == FileType::Symlink {
        Some(tree.v.readlink(&tree.me, attr.ino).await.map_err(at)?)
    } else {
        None
    };
    let mut xattrs = Vec::new();
    for name in tree.v.listxattr(&tree.me, attr.ino).await.map_err(at)? {
        let value = tree
            .v
            .getxattr(&tree.me, attr.ino, &name)
            .await
            .map_err(at)?;
        xattrs.push((lossy(&name).into_owned(), xattr_text(&value)));
    }
    xattrs.sort();
    let bytes = absolute(path)?;
    let name = components(bytes).next_back().unwrap_or(b"/");
    match output {
        Output::Json => {
            let mut json = StatJson::new(name, bytes, &attr, target.as_deref());
            json.xattrs = Some(xattrs.into_iter().collect());
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        Output::Table => {
            let a = &attr;
            match &target {
                Some(t) => println!("  path: {shown} -> {}", lossy(t)),
                None => println!("  path: {shown}"),
            }
            println!("  type: {}", type_name(a.kind));
            println!(" inode: {:<12} links: {}", a.ino.0, a.nlink);
            println!(
                "  mode: {:04o} ({})   uid: {}   gid: {}",
                a.perm,
                mode_string(a.kind, a.perm),
                a.uid,
                a.gid
            );
            match a.kind {
                FileType::CharDevice | FileType::BlockDevice => {
                    let (ma, mi) = dev_split(a.rdev);
                    println!("device: {ma}, {mi}");
                }
                _ => println!(
                    "  size: {:<12} blocks: {:<8} block size: {}",
                    a.size, a.blocks, a.blksize
                ),
            }
            println!("access: {}", a.atime.to_rfc3339());
            println!("modify: {}", a.mtime.to_rfc3339());
            println!("change: {}", a.ctime.to_rfc3339());
            println!(" birth: {}", a.btime.to_rfc3339());
            for (name, value) in &xattrs {
                println!(" xattr: {name}={value:?}");
            }
        }
    }
    Ok(())
}

/// Resolve a file to read (following symlinks); anything but a regular file is an error.
async fn regular_file(tree: &Tree, path: &OsStr) -> Result<FileAttr> {
    let attr = tree.resolve(path, true).await?;
    if attr.kind != FileType::Regular {
        let why = match attr.kind {
            FileType::Directory => FsError::IsDir.to_string(),
            other => format!("not a regular file but a {}", type_name(other)),
        };
        bail!("{}: {why}", path.to_string_lossy());
    }
    Ok(attr)
}

async fn cat(tree: &Tree, path: &OsStr) -> Result<()> {
    let attr = regular_file(tree, path).await?;
    let mut out = std::io::stdout().lock();
    let copied = tree
        .read_file(attr.ino, None, async |chunk: &[u8]| {
            out.write_all(chunk)
                .context("cannot write to standard output")
        })
        .await
        .and_then(|_| out.flush().context("cannot write to standard output"));
    match copied {
        Err(e) if broken_pipe(&e) => Ok(()),
        Err(e) => Err(e.context(format!("cannot read {}", path.to_string_lossy()))),
        Ok(()) => Ok(()),
    }
}

async fn put(tree: &Tree, local: &Path, remote: &OsStr) -> Result<()> {
    let from_stdin = local.as_os_str() == "-";
    let local_shown = if from_stdin {
        "standard input".to_string()
    } else {
        local.display().to_string()
    };
    let (mut input, mode): (Box<dyn Read>, u32) = if from_stdin {
        (Box::new(std::io::stdin().lock()), FILE_MODE)
    } else {
        let file =
            std::fs::File::open(local).with_context(|| format!("cannot open {local_shown}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {local_shown}"))?;
        if meta.is_dir() {
            bail!("{local_shown}: is a directory (use `tarbox import` for directories)");
        }
        (Box::new(file), meta.mode() & 0o777)
    };
    let remote_shown = remote.to_string_lossy();
    // An existing directory receives the file under its local name.
    let mut target = absolute(remote)?.to_vec();
    if let Ok(a) = tree.lookup_path(&target, true).await {
        if a.kind == FileType::Directory {
            let Some(name) = local.file_name().filter(|_| !from_stdin) else {
                bail!("{remote_shown}: is a directory (name the file to create in it)");
            };
            target = join(&target, name.as_bytes());
        }
    }
    let target_os = OsStr::from_bytes(&target);
    let shown = target_os.to_string_lossy();
    let at = |e: FsError| anyhow!("{shown}: {e}");
    let fh = match tree.lookup_path(&target, true).await {
        Ok(a) if a.kind == FileType::Regular => tree
            .v
            .open(&tree.me, a.ino, libc::O_WRONLY | libc::O_TRUNC)
            .await
            .map_err(at)?,
        Ok(a) => bail!("{shown}: exists and is a {}", type_name(a.kind)),
        Err(FsError::NotFound) => {
            let (dir, name) = tree.parent(target_os).await?;
            let (_, fh) = tree
                .v
                .create(
                    &tree.me,
                    dir.ino,
                    &name,
                    mode,
                    libc::O_WRONLY | libc::O_TRUNC,
                )
                .await
                .map_err(at)?;
            fh
        }
        Err(e) => return Err(at(e)),
    };
    let copied = tree.copy_in(fh, &mut input, &local_shown).await;
    let released = tree.v.release(&tree.me, fh).await;
    copied.with_context(|| format!("cannot write {shown}"))?;
    released.map_err(|e| anyhow!("cannot write {shown}: {e}"))?;
    Ok(())
}

async fn get(tree: &Tree, remote: &OsStr, local: &Path) -> Result<()> {
    let attr = regular_file(tree, remote).await?;
    let shown = remote.to_string_lossy();
    if local.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        let copied = tree
            .read_file(attr.ino, None, async |chunk: &[u8]| {
                out.write_all(chunk)
                    .context("cannot write to standard output")
            })
            .await
            .and_then(|_| out.flush().context("cannot write to standard output"));
        return match copied {
            Err(e) if broken_pipe(&e) => Ok(()),
            Err(e) => Err(e.context(format!("cannot read {shown}"))),
            Ok(()) => Ok(()),
        };
    }
    let mut dest = local.to_path_buf();
    if dest.is_dir() {
        let name = components(absolute(remote)?).next_back().unwrap_or(b"file");
        dest.push(OsStr::from_bytes(name));
    }
    let dest_shown = dest.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(u32::from(attr.perm) & 0o777)
        .open(&dest)
        .with_context(|| format!("cannot create {dest_shown}"))?;
    tree.read_file(attr.ino, None, async |chunk: &[u8]| {
        file.write_all(chunk)
            .with_context(|| format!("cannot write {dest_shown}"))
    })
    .await
    .with_context(|| format!("cannot copy {shown} to {dest_shown}"))?;
    file.sync_all()
        .with_context(|| format!("cannot write {dest_shown}"))?;
    Ok(())
}

async fn mkdir(tree: &Tree, path: &OsStr, parents: bool) -> Result<()> {
    if parents {
        tree.mkdir_p(path).await?;
        return Ok(());
    }
    let (dir, name) = tree.parent(path).await?;
    tree.v
        .mkdir(&tree.me, dir.ino, &name, DIR_MODE)
        .await
        .map_err(|e| anyhow!("{}: {e}", path.to_string_lossy()))?;
    Ok(())
}

async fn rm(tree: &Tree, path: &OsStr, recursive: bool) -> Result<()> {
    let shown = path.to_string_lossy();
    let (dir, name) = tree.parent(path).await?;
    let attr = tree
        .v
        .lookup(&tree.me, dir.ino, &name)
        .await
        .map_err(|e| anyhow!("{shown}: {e}"))?;
    if attr.kind == FileType::Directory {
        if !recursive {
            bail!("{shown}: is a directory (use -r to remove it and everything in it)");
        }
        remove_contents(tree, attr.ino, absolute(path)?).await?;
        tree.v
            .rmdir(&tree.me, dir.ino, &name)
            .await
            .map_err(|e| anyhow!("{shown}: {e}"))?;
    } else {
        tree.v
            .unlink(&tree.me, dir.ino, &name)
            .await
            .map_err(|e| anyhow!("{shown}: {e}"))?;
    }
    Ok(())
}

/// Remove everything inside directory `dir` (shown as `path`), depth first.
async fn remove_contents(tree: &Tree, dir: Ino, path: &[u8]) -> Result<()> {
    let entries = tree
        .list(dir)
        .await
        .map_err(|e| anyhow!("{}: {e}", lossy(path)))?;
    for (e, a) in entries {
        let child = join(path, &e.name);
        let at = |err: FsError| anyhow!("{}: {err}", lossy(&child));
        if a.kind == FileType::Directory {
            Box::pin(remove_contents(tree, a.ino, &child)).await?;
            tree.v.rmdir(&tree.me, dir, &e.name).await.map_err(at)?;
        } else {
            tree.v.unlink(&tree.me, dir, &e.name).await.map_err(at)?;
        }
    }
    Ok(())
}

async fn mv(tree: &Tree, from: &OsStr, to: &OsStr) -> Result<()> {
    let (src_dir, src_name) = tree.parent(from).await?;
    // Into an existing directory (not the source itself), as `mv` does.
    let (dst_dir, dst_name) = match tree.lookup_path(absolute(to)?, true).await {
        Ok(a) if a.kind == FileType::Directory => {
            let src = tree.v.lookup(&tree.me, src_dir.ino, &src_name).await;
            if src.is_ok_and(|s| s.ino == a.ino) {
                tree.parent(to).await?
            } else {
                (a, src_name.clone())
            }
        }
        _ => tree.parent(to).await?,
    };
    tree.v
        .rename(
            &tree.me,
            src_dir.ino,
            &src_name,
            dst_dir.ino,
            &dst_name,
            RenameFlags::default(),
        )
        .await
        .map_err(|e| {
            anyhow!(
                "cannot move {} to {}: {e}",
                from.to_string_lossy(),
                to.to_string_lossy()
            )
        })
}

async fn print_tree(tree: &Tree, path: &OsStr) -> Result<()> {
    let attr = tree.resolve(path, true).await?;
    let mut out = std::io::stdout().lock();
    let mut counts = (0u64, 0u64);
    let walked = async {
        writeln!(out, "{}", path.to_string_lossy())?;
        if attr.kind == FileType::Directory {
            tree_level(tree, &mut out, attr.ino, absolute(path)?, "", &mut counts).await?;
        }
        let (dirs, files) = counts;
        writeln!(
            out,
            "\n{dirs} {}, {files} {}",
            if dirs == 1 {
                "directory"
            } else {
                "directories"
            },
            if files == 1 { "file" } else { "files" }
        )?;
        out.flush()?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    match walked {
        Err(e) if broken_pipe(&e) => Ok(()),
        other => other,
    }
}

async fn tree_level(
    tree: &Tree,
    out: &mut dyn Write,
    dir: Ino,
    path: &[u8],
    indent: &str,
    counts: &mut (u64, u64),
) -> Result<()> {
    let entries = tree
        .list(dir)
        .await
        .map_err(|e| anyhow!("{}: {e}", lossy(path)))?;
    let n = entries.len();
    for (i, (e, a)) in entries.into_iter().enumerate() {
        let last = i + 1 == n;
        let child = join(path, &e.name);
        write!(
            out,
            "{indent}{}{}",
            if last { "└── " } else { "├── " },
            lossy(&e.name)
        )?;
        if a.kind == FileType::Symlink {
            let target = tree
                .v
                .readlink(&tree.me, a.ino)
                .await
                .map_err(|err| anyhow!("{}: {err}", lossy(&child)))?;
            write!(out, " -> {}", lossy(&target))?;
        }
        writeln!(out)?;
        if a.kind == FileType::Directory {
            counts.0 += 1;
            let deeper = format!("{indent}{}", if last { "    " } else { "│   " });
            Box::pin(tree_level(tree, out, a.ino, &child, &deeper, counts)).await?;
        } else {
            counts.1 += 1;
        }
    }
    Ok(())
}
