//! Checkpoints, switches (rollback and roll-forward), dropping layers and automatic checkpoints.
//!
//! A tenant's history is a tree of layers. The head is the only layer written; a checkpoint
//! freezes it under a name and continues in a new empty layer on top; a switch continues in a new
//! empty layer on top of any other layer, leaving the old head in the tree. Neither copies
//! anything, and neither ever deletes a layer that holds data, so no history is lost by moving
//! around in it. Only [`Layers::drop`] deletes, and only what the user names.
//!
//! [`Layers`] is the administration of one volume's history, apart from its POSIX operations: a
//! layer is named by a [`LayerRef`], parsed once where the user typed it.

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use super::audit::Subject;
use super::diff::LayerDiff;
use super::{Engine, Volume};
use crate::audit::AuditOp;
use crate::backend::{LayerRecord, LayerSwitch, TenantState};
use crate::error::{BackendError, FsError, FsResult};
use crate::types::{Caller, LayerId, Timestamp, Usage};

/// Longest checkpoint name: it must fit a directory entry under `/.tarbox/snapshots/`.
const MAX_LAYER_NAME: usize = 255;
/// How often the automatic checkpointer looks at the clock and the tenant's setting at most.
const AUTO_CHECKPOINT_POLL: Duration = Duration::from_secs(30);

/// A layer as a user names it: by checkpoint name, or by id (`12` or `#12`; checkpoint names are
/// never all digits, so the two cannot be confused).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LayerRef {
    Id(LayerId),
    Name(String),
}

impl<S: AsRef<str>> From<S> for LayerRef {
    fn from(text: S) -> LayerRef {
        let text = text.as_ref();
        let digits = text.strip_prefix('#').unwrap_or(text);
        match digits.parse::<i64>() {
            Ok(id) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                LayerRef::Id(LayerId(id))
            }
            _ => LayerRef::Name(text.to_owned()),
        }
    }
}

impl FromStr for LayerRef {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<LayerRef, Self::Err> {
        Ok(LayerRef::from(s))
    }
}

impl fmt::Display for LayerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerRef::Id(id) => write!(f, "#{id}"),
            LayerRef::Name(name) => f.write_str(name),
        }
    }
}

/// Every layer of a tenant and which one is the head.
#[derive(Debug, Clone)]
pub struct LayerTree {
    pub head: LayerId,
    /// In increasing id order (parents before children).
    pub layers: Vec<LayerRecord>,
}

/// A layer as listings show it (`/.tarbox/layers/list`, `tarbox layer list --output json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerSummary {
    pub id: i64,
    pub name: Option<String>,
    pub parent: Option<i64>,
    pub description: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When it stopped being the head; `None` for the head.
    pub frozen_at: Option<String>,
    pub current: bool,
    pub children: usize,
    /// Usage of the tree when it was frozen.
    pub usage: Option<Usage>,
}

impl LayerTree {
    pub fn get(&self, id: LayerId) -> Option<&LayerRecord> {
        self.layers.iter().find(|l| l.id == id)
    }

    /// The layer `layer` names.
    pub fn find(&self, layer: &LayerRef) -> Option<&LayerRecord> {
        match layer {
            LayerRef::Id(id) => self.get(*id),
            LayerRef::Name(name) => self
                .layers
                .iter()
                .find(|l| l.name.as_deref() == Some(name.as_str())),
        }
    }

    /// Like [`LayerTree::find`], with a typed error naming the layer.
    pub fn resolve(&self, layer: &LayerRef) -> FsResult<&LayerRecord> {
        self.find(layer)
            .ok_or_else(|| FsError::LayerNotFound(layer.to_string()))
    }

    pub fn children(&self, id: LayerId) -> Vec<LayerId> {
        self.layers
            .iter()
            .filter(|l| l.parent == Some(id))
            .map(|l| l.id)
            .collect()
    }

    /// The layers from `id` down to the base, `id` first.
    pub fn chain(&self, id: LayerId) -> Vec<LayerId> {
        let mut chain = Vec::new();
        let mut cur = self.get(id);
        while let Some(l) = cur {
            chain.push(l.id);
            cur = l.parent.and_then(|p| self.get(p));
        }
        chain
    }

    /// The head's record.
    pub fn current(&self) -> Option<&LayerRecord> {
        self.get(self.head)
    }

    /// `name (#id)` for a checkpoint, `#id` for an unnamed layer.
    pub fn label(layer: &LayerRecord) -> String {
        match &layer.name {
            Some(n) => format!("{n} (#{})", layer.id),
            None => format!("#{}", layer.id),
        }
    }

    pub fn summaries(&self) -> Vec<LayerSummary> {
        self.layers.iter().map(|l| self.summary(l)).collect()
    }

    pub fn summary(&self, l: &LayerRecord) -> LayerSummary {
        LayerSummary {
            id: l.id.0,
            name: l.name.clone(),
            parent: l.parent.map(|p| p.0),
            description: l.description.clone(),
            created_at: l.created_at.to_rfc3339(),
            frozen_at: l.frozen_at.map(Timestamp::to_rfc3339),
            current: l.id == self.head,
            children: self.children(l.id).len(),
            usage: l.usage,
        }
    }

    /// The tree as text, one layer per line, the head marked `*`:
    ///
    /// ```text
    /// #1 base
    /// └── before-refactor (#2)  2026-11-22T10:00:00Z
    ///     ├── experiment (#3)  2026-11-22T10:05:00Z
    ///     └── #4 *
    /// ```
    pub fn render(&self) -> String {
        let mut out = String::new();
        for root in self.layers.iter().filter(|l| l.parent.is_none()) {
            self.render_node(root, "", "", &mut out);
        }
        out
    }

    fn render_node(&self, l: &LayerRecord, first: &str, rest: &str, out: &mut String) {
        let _ = write!(out, "{first}{}", LayerTree::label(l));
        if !l.description.is_empty() {
            let _ = write!(out, " {:?}", l.description);
        }
        if let Some(t) = l.frozen_at {
            let _ = write!(out, "  {}", t.to_rfc3339());
        }
        if l.id == self.head {
            out.push_str(" * (current)");
        }
        out.push('\n');
        let children: Vec<&LayerRecord> = self
            .layers
            .iter()
            .filter(|c| c.parent == Some(l.id))
            .collect();
        for (i, c) in children.iter().enumerate() {
            let last = i + 1 == children.len();
            let (branch, indent) = if last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            self.render_node(
                c,
                &format!("{rest}{branch}"),
                &format!("{rest}{indent}"),
                out,
            );
        }
    }
}

/// Check a checkpoint name: 1 to 255 bytes, no `/`, NUL or control characters, not `.`/`..`, and
/// not all digits (those name layers by id).
pub fn validate_layer_name(name: &str) -> FsResult<()> {
    let bad = |why: &str| {
        Err(FsError::BadInput(format!(
            "invalid checkpoint name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_LAYER_NAME {
        return bad("longer than 255 bytes");
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return bad("contains '/' or a control character");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name.trim() != name {
        return bad("leading or trailing whitespace");
    }
    if name
        .strip_prefix('#')
        .unwrap_or(name)
        .bytes()
        .all(|b| b.is_ascii_digit())
    {
        return bad("all digits (those name layers by id)");
    }
    Ok(())
}

impl Engine {
    /// The layer tree of a tenant, active or retired (a retired tenant has no volume to ask).
    pub async fn layer_tree(&self, tenant: &str) -> FsResult<LayerTree> {
        let record = self.tenant_record(tenant).await?;
        if record.state == TenantState::Deleted {
            return Err(FsError::TenantNotFound(tenant.to_string()));
        }
        Ok(LayerTree {
            head: record.head_layer,
            layers: self.shared.backend.layers(record.id).await?,
        })
    }

    /// Turn automatic checkpoints of a tenant on (every `interval`, when something changed) or
    /// off (`None`). Mounts with the checkpointer running pick the change up within 30 s.
    pub async fn set_auto_checkpoint(
        &self,
        tenant: &str,
        interval: Option<Duration>,
    ) -> FsResult<()> {
        if interval.is_some_and(|i| i < Duration::from_secs(1)) {
            return Err(FsError::BadInput(
                "auto-checkpoint interval must be at least 1 second".into(),
            ));
        }
        let record = self.active_tenant(tenant).await?;
        self.shared
            .backend
            .set_auto_checkpoint(record.id, interval.map(|i| i.as_secs()))
            .await?;
        Ok(())
    }
}

impl Volume {
    /// The administration of this volume's history, acting as this process.
    pub fn layers(&self) -> Layers {
        Layers {
            volume: self.clone(),
            caller: Caller::this_process(),
        }
    }

    /// The tenant's layer tree, read fresh.
    pub(crate) async fn layer_tree(&self) -> FsResult<LayerTree> {
        let tenant = self.inner.tenant.id;
        let record = self
            .backend()
            .tenant_by_id(tenant)
            .await?
            .ok_or(BackendError::TenantGone)?;
        let layers = self.backend().layers(tenant).await?;
        Ok(LayerTree {
            head: record.head_layer,
            layers,
        })
    }

    fn ensure_head_volume(&self) -> FsResult<()> {
        self.ensure_writable()?;
        if self.inner.pinned {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// Freeze the tree as checkpoint `name` and continue writing in a new layer on top. Buffered
    /// writes of this volume are flushed first, so they are part of the checkpoint. Costs the
    /// same whatever the size of the tree. `EEXIST` if the name is taken, `EINVAL` for a bad name.
    /// Returns the checkpoint's record.
    pub(crate) async fn do_checkpoint(
        &self,
        name: &str,
        description: &str,
    ) -> FsResult<LayerRecord> {
        self.ensure_head_volume()?;
        validate_layer_name(name)?;
        self.flush_all().await?;
        let tenant = self.inner.tenant.id;
        let frozen = self
            .layer_change(|head| async move {
                self.backend()
                    .checkpoint(tenant, head, name, description, self.now())
                    .await?;
                Ok(head)
            })
            .await
            .map_err(|e| match e {
                FsError::Backend(BackendError::LayerExists) => {
                    FsError::LayerExists(name.to_owned())
                }
                other => other,
            })?;
        // Other engines follow the new head at once (their caches were filled through the old
        // one: see `meta_cache.rs`).
        self.announce_head_moved();
        info!(tenant = %self.tenant_name(), checkpoint = name, layer = %frozen, "checkpoint");
        let tree = self.layer_tree().await?;
        tree.get(frozen).cloned().ok_or_else(|| {
            BackendError::Corrupt(format!("checkpoint layer {frozen} vanished")).into()
        })
    }

    /// Make the tree exactly what layer `target` (a checkpoint name or a layer id) holds and
    /// continue writing in a new layer on top of it. The layer that was current stays in the tree
    /// (unless it holds nothing), so a later switch can come back to it. Buffered writes are
    /// flushed first (into the layer being left); open handles then see the new tree. Returns the
    /// new head's record.
    pub(crate) async fn do_switch_layer(&self, target: &LayerRef) -> FsResult<LayerRecord> {
        self.ensure_head_volume()?;
        self.flush_all().await?;
        let tenant = self.inner.tenant.id;
        let head = self
            .layer_change(|head| async move {
                let tree = self.layer_tree().await?;
                let to = tree.resolve(target)?;
                if to.id == head {
                    return Ok(head);
                }
                // The rule of a switch: the tree becomes what the target held, so its usage is
                // what the target recorded when frozen; the layer left stays in the history
                // unless it is an unnamed leaf holding nothing (it adds nothing to its parent,
                // and repeated rollbacks would otherwise litter the tree).
                let left = tree.get(head);
                let switch = LayerSwitch {
                    usage: to.usage,
                    discard_head: left.is_some_and(|l| l.name.is_none())
                        && tree.children(head).is_empty(),
                };
                let record = self
                    .backend()
                    .switch_layer(tenant, head, to.id, switch, self.now())
                    .await?;
                Ok(record.id)
            })
            .await?;
        // Other engines' caches hold the old tree: they empty them and follow at once.
        self.announce_head_moved();
        info!(tenant = %self.tenant_name(), %target, layer = %head, "switched layer");
        let tree = self.layer_tree().await?;
        tree.get(head)
            .cloned()
            .ok_or_else(|| BackendError::Corrupt(format!("new head layer {head} vanished")).into())
    }

    fn announce_head_moved(&self) {
        if let Some(meta) = &self.inner.meta {
            meta.announce(
                self.backend(),
                self.inner.tenant.id,
                self.inner.id,
                vec![crate::backend::changes::Change::Tree],
            );
        }
    }

    /// Delete layer `target` and reclaim what only it referenced. The current layer cannot be
    /// dropped (`EBUSY`). A layer others are built on is refused (`EBUSY`) unless `force`, which
    /// folds its contents into each of them first, so no other layer changes what it shows.
    pub(crate) async fn do_drop_layer(&self, target: &LayerRef, force: bool) -> FsResult<()> {
        self.ensure_head_volume()?;
        let tenant = self.inner.tenant.id;
        self.layer_change(|head| async move {
            let tree = self.layer_tree().await?;
            let layer = tree.resolve(target)?;
            if layer.id == head {
                return Err(FsError::LayerBusy(format!(
                    "layer {} is the current layer; switch to another layer before dropping it",
                    LayerTree::label(layer)
                )));
            }
            let children = tree.children(layer.id);
            if !children.is_empty() && !force {
                return Err(FsError::LayerBusy(format!(
                    "layer {} has {} layer(s) built on it; drop it with force to fold it into them",
                    LayerTree::label(layer),
                    children.len()
                )));
            }
            self.backend()
                .drop_layer(tenant, head, layer.id, &children)
                .await?;
            Ok(head)
        })
        .await?;
        info!(tenant = %self.tenant_name(), layer = %target, force, "dropped layer");
        Ok(())
    }

    /// Run a layer change against the current head, retrying (with a fresh view) while other
    /// engines move the head or change the tree underneath; the view follows the result.
    async fn layer_change<F, Fut>(&self, op: F) -> FsResult<LayerId>
    where
        F: Fn(LayerId) -> Fut,
        Fut: std::future::Future<Output = FsResult<LayerId>>,
    {
        let result = self.retrying(|| op(self.view().head())).await;
        // Whatever happened, later operations must write through the head as it is now.
        self.refresh_view().await?;
        result
    }
}

/// The history of one volume's tenant, apart from its POSIX operations: the layer tree,
/// checkpoints, switches (rollback), drops, diffs and time-travel views. Changes go through the
/// volume, so its open files follow them at once; other engines follow within their head poll.
/// Every change is audited as the caller it acts for (this process unless [`Layers::acting_as`]).
#[derive(Debug, Clone)]
pub struct Layers {
    volume: Volume,
    caller: Caller,
}

impl Layers {
    /// The same history, acting for `caller` (whose identity the audit trail records).
    pub fn acting_as(mut self, caller: Caller) -> Layers {
        self.caller = caller;
        self
    }

    /// The tenant's layer tree, read fresh.
    pub async fn tree(&self) -> FsResult<LayerTree> {
        self.volume.layer_tree().await
    }

    /// The layer the volume reads: the head, or the checkpoint of a time-travel view.
    pub fn current(&self) -> LayerId {
        self.volume.view().head()
    }

    /// Freeze the tree as checkpoint `name` and continue writing in a new layer on top. Buffered
    /// writes are part of the checkpoint. `EEXIST` if the name is taken, `EINVAL` for a bad name.
    pub async fn checkpoint(&self, name: &str, description: &str) -> FsResult<LayerRecord> {
        self.volume
            .audited(
                &self.volume.acting(&self.caller),
                AuditOp::Checkpoint,
                Subject::Layer(name),
                self.volume.do_checkpoint(name, description),
            )
            .await
    }

    /// Make the tree what `target` holds (rollback or roll-forward), keeping the layer left.
    /// Returns the new head.
    pub async fn switch_to(&self, target: &LayerRef) -> FsResult<LayerRecord> {
        let label = target.to_string();
        self.volume
            .audited(
                &self.volume.acting(&self.caller),
                AuditOp::SwitchLayer,
                Subject::Layer(&label),
                self.volume.do_switch_layer(target),
            )
            .await
    }

    /// Delete layer `target` (never the current one); `force` folds it into the layers built on
    /// it first, so none of them changes what it shows.
    pub async fn drop_layer(&self, target: &LayerRef, force: bool) -> FsResult<()> {
        let label = target.to_string();
        self.volume
            .audited(
                &self.volume.acting(&self.caller),
                AuditOp::DropLayer,
                Subject::Layer(&label),
                self.volume.do_drop_layer(target, force),
            )
            .await
    }

    /// The changes from layer `from` to layer `to`.
    pub async fn diff(&self, from: &LayerRef, to: &LayerRef) -> FsResult<LayerDiff> {
        self.volume.do_diff(from, to).await
    }

    /// What changed since the last checkpoint or switch (the head against its parent).
    pub async fn diff_current(&self) -> FsResult<LayerDiff> {
        self.volume.do_diff_current().await
    }

    /// A read-only view of the tree as it was at `layer`, sharing the volume's engine and
    /// caches (time travel).
    pub async fn view(&self, layer: &LayerRef) -> FsResult<Volume> {
        let id = self.tree().await?.resolve(layer)?.id;
        self.volume.pinned(id).await
    }

    /// Take an automatic checkpoint if the tenant has them on, the interval has passed since the
    /// current layer began, and it holds changes. Names are `auto-YYYYMMDDTHHMMSSZ` (UTC), so they
    /// sort by time. Returns the checkpoint taken, if any.
    pub async fn auto_checkpoint(&self) -> FsResult<Option<LayerRecord>> {
        let v = &self.volume;
        if v.inner.read_only || v.inner.pinned {
            return Ok(None);
        }
        let tenant = v.inner.tenant.id;
        let Some(record) = v.backend().tenant_by_id(tenant).await? else {
            return Err(BackendError::TenantGone.into());
        };
        let Some(secs) = record.auto_checkpoint_secs else {
            return Ok(None);
        };
        let tree = v.layer_tree().await?;
        let Some(head) = tree.current() else {
            return Ok(None);
        };
        let now = v.now();
        let age = now.0.saturating_sub(head.created_at.0);
        let interval = i64::try_from(secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000_000);
        if age < interval {
            return Ok(None);
        }
        // Buffered writes count as changes: flush them so the checkpoint holds them.
        v.flush_all().await?;
        if v.backend().layer_is_empty(tenant, head.id).await? {
            return Ok(None);
        }
        let name = match jiff::Timestamp::from_nanosecond(i128::from(now.0)) {
            Ok(t) => format!("auto-{}", t.strftime("%Y%m%dT%H%M%SZ")),
            Err(_) => format!("auto-{}", now.0),
        };
        match self.checkpoint(&name, "automatic checkpoint").await {
            Ok(layer) => Ok(Some(layer)),
            // Another mount of the tenant took this one in the same second.
            Err(FsError::LayerExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Run [`Layers::auto_checkpoint`] in the background for as long as the volume lives.
    pub fn spawn_auto_checkpoints(&self) -> tokio::task::JoinHandle<()> {
        let weak = std::sync::Arc::downgrade(&self.volume.inner);
        tokio::spawn(async move {
            loop {
                let poll = {
                    let Some(inner) = weak.upgrade() else { return };
                    let volume = Volume { inner };
                    if let Err(e) = volume.layers().auto_checkpoint().await {
                        warn!(tenant = %volume.tenant_name(), error = %e, "automatic checkpoint failed");
                    }
                    let tenant = volume.inner.tenant.id;
                    let secs = match volume.backend().tenant_by_id(tenant).await {
                        Ok(Some(t)) => t.auto_checkpoint_secs.unwrap_or(u64::MAX),
                        _ => u64::MAX,
                    };
                    AUTO_CHECKPOINT_POLL.min(Duration::from_secs(secs.max(1)))
                };
                tokio::time::sleep(poll).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names() {
        assert!(validate_layer_name("before-refactor").is_ok());
        assert!(validate_layer_name("v1.2 rc").is_ok());
        assert!(validate_layer_name("auto-20261122T103000Z").is_ok());
        for bad in ["", "a/b", "12", "#12", ".", "..", " x", "x\n", "tab\there"] {
            assert!(
                matches!(validate_layer_name(bad), Err(FsError::BadInput(_))),
                "{bad:?} accepted"
            );
        }
        assert!(validate_layer_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn trees_render_with_the_head_marked() {
        let layer = |id: i64, parent: Option<i64>, name: Option<&str>| LayerRecord {
            id: LayerId(id),
            tenant: crate::types::TenantId(1),
            parent: parent.map(LayerId),
            name: name.map(str::to_owned),
            description: String::new(),
            created_at: Timestamp(0),
            frozen_at: None,
            usage: None,
        };
        let tree = LayerTree {
            head: LayerId(4),
            layers: vec![
                layer(1, None, None),
                layer(2, Some(1), Some("before")),
                layer(3, Some(2), Some("experiment")),
                layer(4, Some(2), None),
            ],
        };
        assert_eq!(
            tree.render(),
            "#1\n└── before (#2)\n    ├── experiment (#3)\n    └── #4 * (current)\n"
        );
        assert_eq!(
            tree.chain(LayerId(4)),
            vec![LayerId(4), LayerId(2), LayerId(1)]
        );
        assert_eq!(
            tree.resolve(&"3".into()).map(|l| l.id).ok(),
            Some(LayerId(3))
        );
        assert_eq!(
            tree.resolve(&"#2".into()).map(|l| l.id).ok(),
            Some(LayerId(2))
        );
        assert_eq!(
            tree.resolve(&"experiment".into()).map(|l| l.id).ok(),
            Some(LayerId(3))
        );
        assert!(matches!(
            tree.resolve(&"nope".into()),
            Err(FsError::LayerNotFound(_))
        ));
    }
}
