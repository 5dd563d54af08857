//! The layer side of the model: every checkpoint keeps a copy of the tree as it was, every switch
//! replaces the tree with a copy of the target's, and the layer tree (who is built on whom) is
//! kept to know when a drop needs force.
//!
//! Two rules keep the model simple, and both sides follow them:
//! - Before a checkpoint or a switch, handle slots holding a file with no names left are closed
//!   (a checkpoint taken while such a file is open keeps charging it after a switch back: a known
//!   engine bug, see `conformance_layers_handles.rs`).
//! - Before a switch, slots whose file does not exist in the target's tree are closed too; the
//!   others stay open and see the target's version of their file.
//!
//! Whether the engine keeps the head a switch leaves is its choice (it drops an unnamed layer
//! holding nothing); the model learns it from the engine, and checks that a head it did not keep
//! showed exactly the tree of its parent, so that no change was lost.

use std::collections::HashMap;

use tarbox_fs::LayerId;

use crate::ops::*;
use crate::posix::{Id, Model, Node};

/// A frozen layer: a checkpoint, or a head a switch left.
#[derive(Debug)]
pub(crate) struct Layer {
    /// How the engine is told about it: `cpN` for a checkpoint, `#id` for a head left by a switch.
    pub(crate) name: String,
    pub(crate) named: bool,
    /// The tree it holds.
    pub(crate) nodes: HashMap<Id, Node>,
    /// The layer it is built on (an index into [`History::layers`]); `None` for the base layer.
    pub(crate) parent: Option<usize>,
    pub(crate) alive: bool,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    /// Every layer ever frozen, dropped ones included (they must stay unknown to the engine).
    pub(crate) layers: Vec<Layer>,
    /// The layer the head is built on.
    pub(crate) head_parent: Option<usize>,
    /// Checkpoint names handed out.
    names: usize,
    /// The tree and parent of the head the last switch left, until the engine says whether it
    /// kept it.
    left: Option<(HashMap<Id, Node>, Option<usize>)>,
}

/// A layer operation as the model resolved it, for the engine to perform.
#[derive(Debug, Clone)]
pub(crate) enum LayerAction {
    /// Close `close` (slots), then checkpoint as `name`.
    Checkpoint { name: String, close: Vec<usize> },
    /// Close `close`, then switch to `target`.
    Switch { target: String, close: Vec<usize> },
    /// Drop `target`; `None` is the current layer.
    Drop { target: Option<String>, force: bool },
}

impl History {
    /// The live layers built directly on layer `i`, the head included.
    fn children(&self, i: usize) -> usize {
        let frozen = self
            .layers
            .iter()
            .filter(|l| l.alive && l.parent == Some(i))
            .count();
        frozen + usize::from(self.head_parent == Some(i))
    }

    pub(crate) fn alive(&self) -> impl Iterator<Item = &Layer> {
        self.layers.iter().filter(|l| l.alive)
    }
}

impl Model {
    /// Close the slots `close` picks and return them.
    fn close_slots_where(&mut self, close: impl Fn(&Model, Id) -> bool) -> Vec<usize> {
        let mut closed = Vec::new();
        for slot in 0..SLOTS {
            if let Some(id) = self.slots[slot] {
                if close(self, id) {
                    self.close_slot(slot);
                    closed.push(slot);
                }
            }
        }
        closed
    }

    /// Apply a checkpoint, switch or drop; `None` when the operation does not apply (a switch
    /// before any layer was frozen).
    pub(crate) fn apply_layer_op(&mut self, op: &Op) -> Option<(MRes, LayerAction)> {
        match op {
            Op::Checkpoint { reuse } => {
                let earlier: Vec<usize> = (0..self.history.layers.len())
                    .filter(|&i| self.history.layers[i].named)
                    .collect();
                let reused = reuse
                    .filter(|_| !earlier.is_empty())
                    .map(|pick| earlier[pick.index(earlier.len())]);
                let name = match reused {
                    Some(i) if self.history.layers[i].alive => {
                        let name = self.history.layers[i].name.clone();
                        let action = LayerAction::Checkpoint {
                            name,
                            close: Vec::new(),
                        };
                        return Some((err(libc::EEXIST), action));
                    }
                    Some(i) => {
                        // The name is free again; the dropped layer keeps a name that is not.
                        let layer = &mut self.history.layers[i];
                        let name = layer.name.clone();
                        layer.name = format!("{name}-dropped");
                        name
                    }
                    None => {
                        self.history.names += 1;
                        format!("cp{}", self.history.names - 1)
                    }
                };
                let close = self.close_slots_where(|m, id| m.node(id).nlink == 0);
                self.history.layers.push(Layer {
                    name: name.clone(),
                    named: true,
                    nodes: self.nodes.clone(),
                    parent: self.history.head_parent,
                    alive: true,
                });
                self.history.head_parent = Some(self.history.layers.len() - 1);
                Some((Ok(Out::Unit), LayerAction::Checkpoint { name, close }))
            }
            Op::Switch { pick } => {
                if self.history.layers.is_empty() {
                    return None;
                }
                let i = pick.index(self.history.layers.len());
                let target = self.history.layers[i].name.clone();
                if !self.history.layers[i].alive {
                    let action = LayerAction::Switch {
                        target,
                        close: Vec::new(),
                    };
                    return Some((err(libc::ENOENT), action));
                }
                let close = self.close_slots_where(|m, id| {
                    m.node(id).nlink == 0 || !m.history.layers[i].nodes.contains_key(&id)
                });
                let tree = self.history.layers[i].nodes.clone();
                let left = std::mem::replace(&mut self.nodes, tree);
                self.history.left = Some((left, self.history.head_parent));
                self.history.head_parent = Some(i);
                Some((Ok(Out::Unit), LayerAction::Switch { target, close }))
            }
            Op::Drop { pick, force } => {
                let i = pick.index(self.history.layers.len() + 1);
                let Some(layer) = self.history.layers.get(i) else {
                    let action = LayerAction::Drop {
                        target: None,
                        force: *force,
                    };
                    return Some((err(libc::EBUSY), action));
                };
                let action = LayerAction::Drop {
                    target: Some(layer.name.clone()),
                    force: *force,
                };
                if !layer.alive {
                    return Some((err(libc::ENOENT), action));
                }
                if self.history.children(i) > 0 && !force {
                    return Some((err(libc::EBUSY), action));
                }
                // Its children now hang off its parent and show what they showed.
                let parent = layer.parent;
                for l in &mut self.history.layers {
                    if l.alive && l.parent == Some(i) {
                        l.parent = parent;
                    }
                }
                if self.history.head_parent == Some(i) {
                    self.history.head_parent = parent;
                }
                let layer = &mut self.history.layers[i];
                layer.alive = false;
                layer.nodes = HashMap::new();
                Some((Ok(Out::Unit), action))
            }
            _ => None,
        }
    }

    /// After a successful switch: the engine kept the head it left as layer `kept`, or (`None`)
    /// dropped it, which it may only do if that head showed exactly its parent's tree.
    pub(crate) fn left_layer(&mut self, kept: Option<LayerId>) -> Result<(), String> {
        let (nodes, parent) = self.history.left.take().expect("a switch left a head");
        match kept {
            Some(id) => {
                self.history.layers.push(Layer {
                    name: format!("#{id}"),
                    named: false,
                    nodes,
                    parent,
                    alive: true,
                });
                Ok(())
            }
            None => {
                let parent_tree = parent.map(|p| &self.history.layers[p].nodes);
                if parent_tree == Some(&nodes) {
                    Ok(())
                } else {
                    Err(
                        "the switch discarded the layer it left, whose tree differs from its \
                         parent's: changes were lost"
                            .to_owned(),
                    )
                }
            }
        }
    }
}
