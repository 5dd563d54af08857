//! The engine side: every operation applied to a [`Volume`].

use tarbox_fs::Filesystem as _;
use tarbox_fs::LayerRef;
use tarbox_fs::{Caller, FileHandle, FileType, Ino, LayerId, SetAttr, Volume};

use crate::history::LayerAction;
use crate::ops::*;

pub(crate) struct Sut {
    pub(crate) vol: Volume,
    pub(crate) slots: [Option<(FileHandle, Ino)>; SLOTS],
    /// After a successful switch: the layer it left, if the engine kept it.
    pub(crate) left: Option<Option<LayerId>>,
}

impl Sut {
    pub(crate) async fn resolve(&self, who: Who, comps: &[Vec<u8>]) -> ERes<Ino> {
        let c = who.caller();
        let mut cur = Ino::ROOT;
        for name in comps {
            cur = self.vol.lookup(&c, cur, name).await?.ino;
        }
        Ok(cur)
    }

    pub(crate) async fn parent(&self, who: Who, path: &P) -> ERes<(Ino, Vec<u8>)> {
        let comps = path.comps();
        let (last, dirs) = comps.split_last().expect("paths are not empty");
        Ok((self.resolve(who, dirs).await?, last.clone()))
    }

    pub(crate) async fn close_slot(&mut self, slot: usize) -> ERes<()> {
        if let Some((fh, _)) = self.slots[slot].take() {
            self.vol.release(&Caller::root(), fh).await?;
        }
        Ok(())
    }

    pub(crate) fn slot(&self, slot: usize) -> (FileHandle, Ino) {
        self.slots[slot].expect("the model said the slot is open")
    }

    /// Apply `op` (a layer operation as the model resolved it in `layer`); returns the result
    /// and the inode created, if any.
    pub(crate) async fn apply(
        &mut self,
        op: &Op,
        layer: Option<&LayerAction>,
    ) -> (ERes<Out>, Option<Ino>) {
        let mut created = None;
        let r = match layer {
            Some(action) => self.apply_layer(action).await,
            None => self.apply_op(op, &mut created).await,
        };
        (r, created)
    }

    async fn apply_layer(&mut self, action: &LayerAction) -> ERes<Out> {
        match action {
            LayerAction::Checkpoint { name, close } => {
                for slot in close {
                    self.close_slot(*slot).await?;
                }
                self.vol.layers().checkpoint(name, "").await?;
            }
            LayerAction::Switch { target, close } => {
                for slot in close {
                    self.close_slot(*slot).await?;
                }
                let left = self.vol.layers().current();
                self.vol
                    .layers()
                    .switch_to(&LayerRef::from(&target))
                    .await?;
                let kept = self.vol.layers().tree().await?.get(left).is_some();
                self.left = Some(kept.then_some(left));
            }
            LayerAction::Drop { target, force } => {
                let target = match target {
                    Some(t) => t.clone(),
                    None => format!("#{}", self.vol.layers().current()),
                };
                self.vol
                    .layers()
                    .drop_layer(&LayerRef::from(&target), *force)
                    .await?;
            }
        }
        Ok(Out::Unit)
    }

    pub(crate) async fn apply_op(&mut self, op: &Op, created: &mut Option<Ino>) -> ERes<Out> {
        let vol = self.vol.clone();
        let root = Caller::root();
        match op {
            Op::Create {
                who,
                path,
                mode,
                excl,
                trunc,
            } => {
                let c = who.caller();
                let (p, name) = self.parent(*who, path).await?;
                let mut flags = libc::O_WRONLY | libc::O_CREAT;
                if *excl {
                    flags |= libc::O_EXCL;
                }
                if *trunc {
                    flags |= libc::O_TRUNC;
                }
                let (attr, fh) = vol.create(&c, p, &name, mode.0, flags).await?;
                *created = Some(attr.ino);
                vol.release(&c, fh).await?;
                Ok(Out::Unit)
            }
            Op::Mkdir { who, path, mode } => {
                let (p, name) = self.parent(*who, path).await?;
                let attr = vol.mkdir(&who.caller(), p, &name, mode.0).await?;
                *created = Some(attr.ino);
                Ok(Out::Unit)
            }
            Op::Symlink { path, target } => {
                let (p, name) = self.parent(Who::Root, path).await?;
                let attr = vol.symlink(&root, p, &name, target.as_bytes()).await?;
                *created = Some(attr.ino);
                Ok(Out::Unit)
            }
            Op::Readlink { path } => {
                let ino = self.resolve(Who::Root, &path.comps()).await?;
                Ok(Out::Data(Data(vol.readlink(&root, ino).await?)))
            }
            Op::Write {
                who,
                path,
                off,
                len,
                seed,
            } => {
                let c = who.caller();
                let ino = self.resolve(*who, &path.comps()).await?;
                let fh = vol.open(&c, ino, libc::O_WRONLY).await?;
                let written = vol.write(&c, fh, *off, &pattern(*seed, *off, *len)).await;
                let released = vol.release(&c, fh).await;
                let n = written?;
                released?;
                Ok(Out::Len(n))
            }
            Op::Read {
                who,
                path,
                off,
                len,
            } => {
                let c = who.caller();
                let ino = self.resolve(*who, &path.comps()).await?;
                let fh = vol.open(&c, ino, libc::O_RDONLY).await?;
                let attr = vol.getattr(&c, ino).await;
                let out = match attr {
                    Ok(a) if a.kind == FileType::Directory => Ok(Out::Unit),
                    Ok(_) => vol
                        .read(&c, fh, *off, *len)
                        .await
                        .map(|b| Out::Data(Data(b.to_vec()))),
                    Err(e) => Err(e),
                };
                let released = vol.release(&c, fh).await;
                let out = out?;
                released?;
                Ok(out)
            }
            Op::Truncate { who, path, size } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                let set = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                vol.setattr(&who.caller(), ino, &set).await?;
                Ok(Out::Unit)
            }
            Op::Unlink { who, path } => {
                let (p, name) = self.parent(*who, path).await?;
                vol.unlink(&who.caller(), p, &name).await?;
                Ok(Out::Unit)
            }
            Op::Rmdir { who, path } => {
                let (p, name) = self.parent(*who, path).await?;
                vol.rmdir(&who.caller(), p, &name).await?;
                Ok(Out::Unit)
            }
            Op::Rename { from, to, flags } => {
                let (sp, sname) = self.parent(Who::Root, from).await?;
                let (dp, dname) = self.parent(Who::Root, to).await?;
                vol.rename(&root, sp, &sname, dp, &dname, flags.to_engine())
                    .await?;
                Ok(Out::Unit)
            }
            Op::Link { from, to } => {
                let ino = self.resolve(Who::Root, &from.comps()).await?;
                let (p, name) = self.parent(Who::Root, to).await?;
                vol.link(&root, ino, p, &name).await?;
                Ok(Out::Unit)
            }
            Op::SetXattr {
                who,
                path,
                name,
                value,
                mode,
            } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                vol.setxattr(&who.caller(), ino, name.as_bytes(), value, *mode)
                    .await?;
                Ok(Out::Unit)
            }
            Op::GetXattr { who, path, name } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                Ok(Out::Data(Data(
                    vol.getxattr(&who.caller(), ino, name.as_bytes()).await?,
                )))
            }
            Op::RemoveXattr { who, path, name } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                vol.removexattr(&who.caller(), ino, name.as_bytes()).await?;
                Ok(Out::Unit)
            }
            Op::ListXattr { path } => {
                let ino = self.resolve(Who::Root, &path.comps()).await?;
                let names = vol.listxattr(&root, ino).await?;
                Ok(Out::Names(
                    names
                        .iter()
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .collect(),
                ))
            }
            Op::Chmod { who, path, mode } => {
                let ino = self.resolve(*who, &path.comps()).await?;
                let set = SetAttr {
                    mode: Some(mode.0),
                    ..SetAttr::default()
                };
                vol.setattr(&who.caller(), ino, &set).await?;
                Ok(Out::Unit)
            }
            Op::Stat { who, path } => {
                let c = who.caller();
                let comps = path.comps();
                let (last, dirs) = comps.split_last().expect("paths are not empty");
                let dir = self.resolve(*who, dirs).await?;
                Ok(Out::Stat(St::of(&vol.lookup(&c, dir, last).await?)))
            }
            Op::HOpen { slot, path } => {
                self.close_slot(*slot).await?;
                let ino = self.resolve(Who::Root, &path.comps()).await?;
                let fh = vol.open(&root, ino, libc::O_RDWR).await?;
                self.slots[*slot] = Some((fh, ino));
                Ok(Out::Unit)
            }
            Op::HWrite {
                slot,
                off,
                len,
                seed,
            } => {
                let (fh, _) = self.slot(*slot);
                Ok(Out::Len(
                    vol.write(&root, fh, *off, &pattern(*seed, *off, *len))
                        .await?,
                ))
            }
            Op::HRead { slot, off, len } => {
                let (fh, _) = self.slot(*slot);
                Ok(Out::Data(Data(
                    vol.read(&root, fh, *off, *len).await?.to_vec(),
                )))
            }
            Op::HTruncate { slot, size } => {
                let (fh, ino) = self.slot(*slot);
                let set = SetAttr {
                    size: Some(*size),
                    handle: Some(fh),
                    ..SetAttr::default()
                };
                vol.setattr(&root, ino, &set).await?;
                Ok(Out::Unit)
            }
            Op::HStat { slot } => {
                let (_, ino) = self.slot(*slot);
                Ok(Out::Stat(St::of(&vol.getattr(&root, ino).await?)))
            }
            Op::HClose { slot } => {
                self.close_slot(*slot).await?;
                Ok(Out::Unit)
            }
            Op::Checkpoint { .. } | Op::Switch { .. } | Op::Drop { .. } => {
                unreachable!("layer operations are applied by apply_layer")
            }
        }
    }
}
