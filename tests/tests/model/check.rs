//! Whole-tree checks at the end of a sequence: the live tree, the tenant's usage, and every
//! layer kept in the history, through time-travel views.

use std::collections::{BTreeMap, BTreeSet};

use tarbox_fs::Filesystem as _;
use tarbox_fs::LayerRef;
use tarbox_fs::{Caller, Engine, FileAttr, FileType, FsError, Ino, LayerId, Volume, VolumeOptions};

use crate::ops::*;
use crate::posix::{Id, Kind, Model, ROOT};

/// Walk the engine's tree through readdir and compare every node with the model.
pub(crate) async fn check_tree(vol: &Volume, model: &Model) -> Result<(), String> {
    let root = Caller::root();
    let mut visited: BTreeSet<Id> = BTreeSet::new();
    let mut reached: BTreeSet<Id> = BTreeSet::from([ROOT]);
    let mut stack: Vec<(Id, String)> = vec![(ROOT, String::new())];
    let e = |what: String| move |err: FsError| format!("{what}: {err}");
    while let Some((dir, path)) = stack.pop() {
        visited.insert(dir);
        let dino = model.ino[&dir];
        let parent_ino = model.ino[&model.node(dir).parent];
        let listing = readdir_all(vol, dino)
            .await
            .map_err(e(format!("readdir {path}/")))?;
        let mut names: BTreeMap<Vec<u8>, (Ino, FileType)> = BTreeMap::new();
        for entry in &listing {
            match &entry.name[..] {
                b"." if entry.ino == dino => {}
                b".." if entry.ino == parent_ino => {}
                b"." | b".." => {
                    return Err(format!(
                        "{path}/: entry {:?} is inode {}, expected {}",
                        String::from_utf8_lossy(&entry.name),
                        entry.ino,
                        if entry.name == b"." { dino } else { parent_ino }
                    ));
                }
                name => {
                    if names
                        .insert(name.to_vec(), (entry.ino, entry.kind))
                        .is_some()
                    {
                        return Err(format!(
                            "{path}/: name {:?} listed twice",
                            String::from_utf8_lossy(name)
                        ));
                    }
                }
            }
        }
        let plus = readdirplus_all(vol, dino)
            .await
            .map_err(e(format!("readdirplus {path}/")))?;
        let expected = model.entries(dir).expect("a directory");
        let got_names: Vec<String> = names
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        let want_names: Vec<String> = expected
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        if got_names != want_names {
            return Err(format!(
                "{path}/ lists {got_names:?}, model has {want_names:?}"
            ));
        }
        for (name, &id) in expected {
            let child_path = format!("{path}/{}", String::from_utf8_lossy(name));
            let node = model.node(id);
            reached.insert(id);
            let (ino, kind) = names[name];
            let want = model.stat(id);
            if (ino, kind) != (want.ino, want.kind) {
                return Err(format!(
                    "{child_path}: listed as inode {ino} {kind:?}, model {want:?}"
                ));
            }
            let attr = vol
                .getattr(&root, ino)
                .await
                .map_err(e(format!("getattr {child_path}")))?;
            let got = St::of(&attr);
            if got != want {
                return Err(format!("{child_path}: stat {got:?}, model {want:?}"));
            }
            match plus.iter().find(|(d, _)| d.name == *name) {
                Some((_, a)) if St::of(a) == want => {}
                other => {
                    return Err(format!(
                        "{child_path}: readdirplus gives {:?}, model {want:?}",
                        other.map(|(_, a)| St::of(a))
                    ));
                }
            }
            match &node.kind {
                Kind::File(data) => {
                    let content = read_all(vol, ino)
                        .await
                        .map_err(e(format!("read {child_path}")))?;
                    if &content != data {
                        return Err(format!(
                            "{child_path}: content differs from the model: {}",
                            first_diff(&content, data)
                        ));
                    }
                }
                Kind::Sym(target) => {
                    let got = vol
                        .readlink(&root, ino)
                        .await
                        .map_err(e(format!("readlink {child_path}")))?;
                    if &got != target {
                        return Err(format!(
                            "{child_path}: readlink {:?}, model {:?}",
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(target)
                        ));
                    }
                }
                Kind::Dir(_) => {
                    if !visited.contains(&id) {
                        stack.push((id, child_path.clone()));
                    }
                }
            }
            let xnames = vol
                .listxattr(&root, ino)
                .await
                .map_err(e(format!("listxattr {child_path}")))?;
            let mut got_x = BTreeMap::new();
            for n in xnames {
                let v = vol
                    .getxattr(&root, ino, &n)
                    .await
                    .map_err(e(format!("getxattr {child_path}")))?;
                got_x.insert(String::from_utf8_lossy(&n).into_owned(), v);
            }
            if got_x != node.xattrs {
                return Err(format!(
                    "{child_path}: xattrs {got_x:?}, model {:?}",
                    node.xattrs
                ));
            }
        }
    }
    if reached.len() != model.nodes.len() {
        return Err(format!(
            "model bug: {} nodes, {} reachable",
            model.nodes.len(),
            reached.len()
        ));
    }
    Ok(())
}

pub(crate) async fn readdir_all(
    vol: &Volume,
    ino: Ino,
) -> Result<Vec<tarbox_fs::DirEntry>, FsError> {
    let root = Caller::root();
    let fh = vol.opendir(&root, ino).await?;
    let mut out: Vec<tarbox_fs::DirEntry> = Vec::new();
    let mut offset = 0;
    loop {
        let page = vol.readdir(&root, ino, fh, offset).await?;
        let Some(last) = page.last() else { break };
        offset = last.next_offset;
        out.extend(page);
    }
    vol.releasedir(&root, fh).await?;
    Ok(out)
}

pub(crate) async fn readdirplus_all(
    vol: &Volume,
    ino: Ino,
) -> Result<Vec<(tarbox_fs::DirEntry, FileAttr)>, FsError> {
    let root = Caller::root();
    let fh = vol.opendir(&root, ino).await?;
    let mut out: Vec<(tarbox_fs::DirEntry, FileAttr)> = Vec::new();
    let mut offset = 0;
    loop {
        let page = vol.readdirplus(&root, ino, fh, offset).await?;
        let Some((last, _)) = page.last() else { break };
        offset = last.next_offset;
        out.extend(page);
    }
    vol.releasedir(&root, fh).await?;
    Ok(out)
}

pub(crate) async fn read_all(vol: &Volume, ino: Ino) -> Result<Vec<u8>, FsError> {
    let root = Caller::root();
    let fh = vol.open(&root, ino, libc::O_RDONLY).await?;
    let mut out = Vec::new();
    let result = loop {
        // Odd chunk size: reads start inside blocks.
        match vol.read(&root, fh, out.len() as u64, 5000).await {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => break Err(e),
        }
    };
    vol.release(&root, fh).await?;
    result.map(|()| out)
}

/// The tenant's usage must be what the model's nodes charge.
pub(crate) async fn check_usage(
    engine: &Engine,
    tenant: &str,
    model: &Model,
) -> Result<(), String> {
    let usage = engine
        .tenant_info(tenant)
        .await
        .map_err(|e| format!("tenant_info: {e}"))?
        .usage;
    let want = model.usage();
    if usage != want {
        return Err(format!("usage is {usage:?}, model {want:?}"));
    }
    Ok(())
}

/// The layer tree must hold the head and exactly the layers the model kept, each on the parent
/// the model says, each recording the usage of its tree; a time-travel view of each must show
/// the tree the model kept for it.
pub(crate) async fn check_layers(
    engine: &Engine,
    tenant: &str,
    vol: &Volume,
    model: &Model,
) -> Result<(), String> {
    let tree = vol
        .layers()
        .tree()
        .await
        .map_err(|e| format!("layers: {e}"))?;
    let history = &model.history;
    let id_of = |i: usize| -> Result<LayerId, String> {
        let name = &history.layers[i].name;
        tree.find(&LayerRef::from(name))
            .map(|l| l.id)
            .ok_or_else(|| format!("layer {name} is missing:\n{}", tree.render()))
    };
    let alive: Vec<usize> = (0..history.layers.len())
        .filter(|&i| history.layers[i].alive)
        .collect();
    if tree.layers.len() != alive.len() + 1 {
        let names: Vec<&str> = history.alive().map(|l| l.name.as_str()).collect();
        return Err(format!(
            "the engine has {} layers, the model the head and {names:?}:\n{}",
            tree.layers.len(),
            tree.render()
        ));
    }
    let head = tree.current().ok_or("no current layer")?;
    let head_parent = history.head_parent.map(id_of).transpose()?;
    if head.parent != head_parent {
        return Err(format!(
            "the head is built on {:?}, the model says {head_parent:?}:\n{}",
            head.parent,
            tree.render()
        ));
    }
    for (i, layer) in history.layers.iter().enumerate() {
        if !layer.alive {
            if tree.find(&LayerRef::from(&layer.name)).is_some() {
                return Err(format!("dropped layer {} is still listed", layer.name));
            }
            continue;
        }
        let record = tree.get(id_of(i)?).expect("found by name");
        let parent = layer.parent.map(id_of).transpose()?;
        if record.parent != parent {
            return Err(format!(
                "layer {} is built on {:?}, the model says {parent:?}:\n{}",
                layer.name,
                record.parent,
                tree.render()
            ));
        }
        let view_model = model.with_nodes(layer.nodes.clone());
        if record.usage != Some(view_model.usage()) {
            return Err(format!(
                "layer {} records usage {:?}, its tree charges {:?}",
                layer.name,
                record.usage,
                view_model.usage()
            ));
        }
        let options = VolumeOptions {
            layer: Some(LayerRef::from(&layer.name)),
            ..VolumeOptions::default()
        };
        let view = engine
            .volume_with(tenant, options)
            .await
            .map_err(|e| format!("time travel to {}: {e}", layer.name))?;
        check_tree(&view, &view_model)
            .await
            .map_err(|e| format!("time travel to {}: {e}", layer.name))?;
    }
    Ok(())
}
