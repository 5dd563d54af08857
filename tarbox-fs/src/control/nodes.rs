//! The virtual nodes of `/.tarbox` and how their inode numbers are told apart from the tree's.
//!
//! Inode numbers of a tenant's tree are allocated upwards from 1 and stay far below 2^40. The
//! control directory uses two ranges above that:
//! - bit 63 set: a fixed node of the control directory (`CONTROL | Node as u64`);
//! - bit 62 set: a node of a snapshot tree, `SNAPSHOT | slot << 40 | ino`, where the slot (22 bits)
//!   names the checkpoint within this mount and `ino` is the inode in that checkpoint's tree.
//!
//! Bit 61 belongs to the nodes of native mounts, which the volume serves itself (see
//! `engine/native/`): they pass through here as the tree's.

use crate::error::{FsError, FsResult};
use crate::types::Ino;

const CONTROL: u64 = 1 << 63;
const SNAPSHOT: u64 = 1 << 62;
const SLOT_SHIFT: u32 = 40;
/// Inodes of a snapshot tree must fit below this to be shown.
pub(super) const MAX_SNAPSHOT_INO: u64 = 1 << SLOT_SHIFT;
/// Snapshot slots a mount can hand out.
pub(super) const MAX_SLOTS: u32 = 1 << 22;

/// A fixed node of the control directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub(super) enum Node {
    /// `/.tarbox`
    Root = 1,
    /// `/.tarbox/layers`
    Layers,
    LayersCurrent,
    LayersList,
    LayersTree,
    LayersNew,
    LayersSwitch,
    LayersDrop,
    LayersDiff,
    /// `/.tarbox/snapshots`: one directory per checkpoint.
    Snapshots,
    /// `/.tarbox/stats`
    Stats,
    StatsUsage,
    /// `/.tarbox/last_error`
    LastError,
    /// `/.tarbox/audit`
    Audit,
    /// `/.tarbox/audit/recent`: the tenant's latest audit events.
    AuditRecent,
    /// `/.tarbox/policy`: the tenant's access policy, read-only.
    Policy,
}

impl Node {
    const ALL: [Node; 16] = [
        Node::Root,
        Node::Layers,
        Node::LayersCurrent,
        Node::LayersList,
        Node::LayersTree,
        Node::LayersNew,
        Node::LayersSwitch,
        Node::LayersDrop,
        Node::LayersDiff,
        Node::Snapshots,
        Node::Stats,
        Node::StatsUsage,
        Node::LastError,
        Node::Audit,
        Node::AuditRecent,
        Node::Policy,
    ];

    pub(super) fn ino(self) -> Ino {
        Ino(CONTROL | self as u64)
    }

    pub(super) fn is_dir(self) -> bool {
        matches!(
            self,
            Node::Root | Node::Layers | Node::Snapshots | Node::Stats | Node::Audit
        )
    }

    /// Files that take commands when written.
    pub(super) fn is_command(self) -> bool {
        matches!(
            self,
            Node::LayersNew | Node::LayersSwitch | Node::LayersDrop
        )
    }

    pub(super) fn name(self) -> &'static [u8] {
        match self {
            Node::Root => b".tarbox",
            Node::Layers => b"layers",
            Node::LayersCurrent => b"current",
            Node::LayersList => b"list",
            Node::LayersTree => b"tree",
            Node::LayersNew => b"new",
            Node::LayersSwitch => b"switch",
            Node::LayersDrop => b"drop",
            Node::LayersDiff => b"diff",
            Node::Snapshots => b"snapshots",
            Node::Stats => b"stats",
            Node::StatsUsage => b"usage",
            Node::LastError => b"last_error",
            Node::Audit => b"audit",
            Node::AuditRecent => b"recent",
            Node::Policy => b"policy",
        }
    }

    /// Its path in the tenant's tree, as access policies name it.
    pub(super) fn path(self) -> &'static str {
        match self {
            Node::Root => "/.tarbox",
            Node::Layers => "/.tarbox/layers",
            Node::LayersCurrent => "/.tarbox/layers/current",
            Node::LayersList => "/.tarbox/layers/list",
            Node::LayersTree => "/.tarbox/layers/tree",
            Node::LayersNew => "/.tarbox/layers/new",
            Node::LayersSwitch => "/.tarbox/layers/switch",
            Node::LayersDrop => "/.tarbox/layers/drop",
            Node::LayersDiff => "/.tarbox/layers/diff",
            Node::Snapshots => "/.tarbox/snapshots",
            Node::Stats => "/.tarbox/stats",
            Node::StatsUsage => "/.tarbox/stats/usage",
            Node::LastError => "/.tarbox/last_error",
            Node::Audit => "/.tarbox/audit",
            Node::AuditRecent => "/.tarbox/audit/recent",
            Node::Policy => "/.tarbox/policy",
        }
    }

    /// The directory holding it (`None` for `/.tarbox`, which lives in the tree's root).
    pub(super) fn parent(self) -> Option<Node> {
        match self {
            Node::Root => None,
            Node::Layers
            | Node::Snapshots
            | Node::Stats
            | Node::LastError
            | Node::Audit
            | Node::Policy => Some(Node::Root),
            Node::LayersCurrent
            | Node::LayersList
            | Node::LayersTree
            | Node::LayersNew
            | Node::LayersSwitch
            | Node::LayersDrop
            | Node::LayersDiff => Some(Node::Layers),
            Node::StatsUsage => Some(Node::Stats),
            Node::AuditRecent => Some(Node::Audit),
        }
    }

    /// The fixed children of a directory, in listing order.
    pub(super) fn children(self) -> impl Iterator<Item = Node> {
        Node::ALL
            .into_iter()
            .filter(move |n| n.parent() == Some(self))
    }

    pub(super) fn child(self, name: &[u8]) -> Option<Node> {
        self.children().find(|n| n.name() == name)
    }
}

/// What an inode number of a mount refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The tenant's tree.
    Tree(Ino),
    /// A fixed node of `/.tarbox`.
    Control(Node),
    /// Inode `ino` of the checkpoint in `slot`.
    Snapshot { slot: u32, ino: Ino },
}

pub(super) fn decode(ino: Ino) -> FsResult<Target> {
    let n = ino.0;
    if n & CONTROL != 0 {
        let k = n & !CONTROL;
        return Node::ALL
            .into_iter()
            .find(|node| *node as u64 == k)
            .map(Target::Control)
            .ok_or(FsError::NotFound);
    }
    if n & SNAPSHOT != 0 {
        let rest = n & !SNAPSHOT;
        return Ok(Target::Snapshot {
            slot: (rest >> SLOT_SHIFT) as u32,
            ino: Ino(rest & (MAX_SNAPSHOT_INO - 1)),
        });
    }
    Ok(Target::Tree(ino))
}

/// The mount's inode number of inode `ino` of the checkpoint in `slot`.
pub(super) fn snapshot_ino(slot: u32, ino: Ino) -> FsResult<Ino> {
    if ino.0 >= MAX_SNAPSHOT_INO || slot >= MAX_SLOTS {
        return Err(FsError::Invalid(
            "inode number too large for a snapshot view",
        ));
    }
    Ok(Ino(SNAPSHOT | u64::from(slot) << SLOT_SHIFT | ino.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        assert_eq!(decode(Ino(1)).ok(), Some(Target::Tree(Ino(1))));
        assert_eq!(decode(Ino(123_456)).ok(), Some(Target::Tree(Ino(123_456))));
        for node in Node::ALL {
            assert_eq!(decode(node.ino()).ok(), Some(Target::Control(node)));
        }
        let ino = snapshot_ino(7, Ino(99)).expect("fits");
        assert_eq!(
            decode(ino).ok(),
            Some(Target::Snapshot {
                slot: 7,
                ino: Ino(99)
            })
        );
        assert!(decode(Ino(CONTROL | 999)).is_err());
        assert!(snapshot_ino(0, Ino(MAX_SNAPSHOT_INO)).is_err());
    }

    #[test]
    fn the_tree_is_what_the_docs_say() {
        let names = |n: Node| -> Vec<&[u8]> { n.children().map(Node::name).collect() };
        assert_eq!(
            names(Node::Root),
            vec![
                &b"layers"[..],
                b"snapshots",
                b"stats",
                b"last_error",
                b"audit",
                b"policy"
            ]
        );
        assert_eq!(
            names(Node::Layers),
            vec![
                &b"current"[..],
                b"list",
                b"tree",
                b"new",
                b"switch",
                b"drop",
                b"diff"
            ]
        );
        assert_eq!(Node::Layers.child(b"new"), Some(Node::LayersNew));
        assert!(Node::LayersNew.is_command() && !Node::LayersList.is_command());
        for node in Node::ALL {
            let path = node.path().as_bytes();
            assert!(path.ends_with(node.name()), "{}", node.path());
            if let Some(parent) = node.parent() {
                assert_eq!(path, [parent.path().as_bytes(), b"/", node.name()].concat());
            }
        }
    }
}
