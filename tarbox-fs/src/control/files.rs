//! What the control files contain when read, and what writing to them does.
//!
//! Reads are generated when a file is opened (or stat'ed, for its size) from the engine's current
//! answers. A write to a command file is one command: its text, trimmed, is a layer name or id, or
//! a JSON object for the options (`{"name": "x", "description": "…"}` for `layers/new`,
//! `{"name": "x", "force": true}` for `layers/drop`).

use serde::{Deserialize, Serialize};

use super::ControlFs;
use super::nodes::Node;
use crate::audit::AuditEvent;
use crate::engine::{LayerRef, LayerTree};
use crate::error::{FsError, FsResult};
use crate::types::{Caller, Quota, Usage};

/// Events shown by `/.tarbox/audit/recent`.
const RECENT_EVENTS: usize = 100;

const HELP_NEW: &str = "Write a name here to checkpoint the tree under that name and keep working \
in a new layer:\n  echo before-refactor > /.tarbox/layers/new\nor JSON: \
{\"name\": \"before-refactor\", \"description\": \"why\"}\n";
const HELP_SWITCH: &str = "Write a checkpoint name or layer id here to make the tree that layer's \
tree (rollback or roll-forward); the current layer stays listed:\n  \
echo before-refactor > /.tarbox/layers/switch\n";
const HELP_DROP: &str = "Write a checkpoint name or layer id here to delete that layer. A layer \
other layers are built on needs force, which folds it into them:\n  \
echo old > /.tarbox/layers/drop\n  echo '{\"name\": \"old\", \"force\": true}' > \
/.tarbox/layers/drop\n";

/// `stats/usage`.
#[derive(Debug, Serialize)]
struct UsageReport {
    bytes: u64,
    inodes: u64,
    quota_bytes: Option<u64>,
    quota_inodes: Option<u64>,
    /// Percent of the quota used, one decimal; `None` without a quota.
    bytes_percent: Option<f64>,
    inodes_percent: Option<f64>,
    layers: usize,
    checkpoints: usize,
    current_layer: i64,
}

fn percent(used: u64, limit: Option<u64>) -> Option<f64> {
    limit.map(|l| {
        if l == 0 {
            100.0
        } else {
            ((used as f64 / l as f64) * 1000.0).round() / 10.0
        }
    })
}

fn usage_report(usage: Usage, quota: Quota, tree: &LayerTree) -> UsageReport {
    UsageReport {
        bytes: usage.bytes,
        inodes: usage.inodes,
        quota_bytes: quota.bytes,
        quota_inodes: quota.inodes,
        bytes_percent: percent(usage.bytes, quota.bytes),
        inodes_percent: percent(usage.inodes, quota.inodes),
        layers: tree.layers.len(),
        checkpoints: tree.layers.iter().filter(|l| l.name.is_some()).count(),
        current_layer: tree.head.0,
    }
}

/// Newest-first events as lines, oldest first (like a log's tail).
fn render_recent(newest_first: &[AuditEvent]) -> String {
    let mut out = String::new();
    for e in newest_first.iter().rev() {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("no audit events (is the tenant's audit level off?)\n");
    }
    out
}

fn json<T: Serialize>(value: &T) -> FsResult<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(value)
        .map_err(|e| FsError::BadInput(format!("cannot encode JSON: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCommand {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerCommand {
    name: String,
    #[serde(default)]
    force: bool,
}

/// The command text: UTF-8, trimmed, not empty.
fn command_text(data: &[u8]) -> FsResult<&str> {
    let text = std::str::from_utf8(data)
        .map_err(|_| FsError::BadInput("command is not UTF-8 text".into()))?
        .trim();
    if text.is_empty() {
        return Err(FsError::BadInput("empty command".into()));
    }
    Ok(text)
}

fn parse_json<'a, T: Deserialize<'a>>(text: &'a str) -> FsResult<T> {
    serde_json::from_str(text).map_err(|e| FsError::BadInput(format!("invalid JSON command: {e}")))
}

/// What `/.tarbox/policy` shows of a tenant without an access policy.
const NO_POLICY: &str = "# No access policy: POSIX permissions alone decide. Set one with\n\
                         # `tarbox policy set -t TENANT FILE` (see docs/access-policy.md).\n";

impl ControlFs {
    /// The content of a control file, as a read sees it.
    pub(super) async fn content(&self, node: Node) -> FsResult<Vec<u8>> {
        let volume = &self.volume;
        let layers = volume.layers();
        match node {
            Node::LayersCurrent => {
                let tree = layers.tree().await?;
                let current = tree.get(layers.current()).ok_or(FsError::NotFound)?.clone();
                json(&tree.summary(&current))
            }
            Node::LayersList => json(&layers.tree().await?.summaries()),
            Node::LayersTree => Ok(layers.tree().await?.render().into_bytes()),
            Node::LayersDiff => Ok(layers.diff_current().await?.render().into_bytes()),
            Node::StatsUsage => {
                let (usage, quota) = volume.usage().await?;
                let tree = layers.tree().await?;
                json(&usage_report(usage, quota, &tree))
            }
            Node::LastError => Ok(self.last_error().into_bytes()),
            Node::Policy => Ok(volume
                .access_policy_source()
                .unwrap_or_else(|| NO_POLICY.to_string())
                .into_bytes()),
            Node::AuditRecent => {
                volume.flush_audit().await;
                let events = volume.recent_audit(RECENT_EVENTS).await?;
                Ok(render_recent(&events).into_bytes())
            }
            Node::LayersNew => Ok(HELP_NEW.as_bytes().to_vec()),
            Node::LayersSwitch => Ok(HELP_SWITCH.as_bytes().to_vec()),
            Node::LayersDrop => Ok(HELP_DROP.as_bytes().to_vec()),
            Node::Root | Node::Layers | Node::Snapshots | Node::Stats | Node::Audit => {
                Err(FsError::IsDir)
            }
        }
    }

    /// Run the command written to `node`. On failure the error is also kept for `last_error`.
    pub(super) async fn command(&self, caller: &Caller, node: Node, data: &[u8]) -> FsResult<()> {
        let result = self.run_command(caller, node, data).await;
        let file = String::from_utf8_lossy(node.name()).into_owned();
        match &result {
            Ok(()) => self.set_last_error(String::new()),
            Err(e) => self.set_last_error(format!(
                "layers/{file}: {e} ({})\n",
                std::io::Error::from_raw_os_error(e.errno())
            )),
        }
        result
    }

    async fn run_command(&self, caller: &Caller, node: Node, data: &[u8]) -> FsResult<()> {
        let text = command_text(data)?;
        let layers = self.layers(caller);
        match node {
            Node::LayersNew => {
                let cmd = if text.starts_with('{') {
                    parse_json::<NewCommand>(text)?
                } else {
                    NewCommand {
                        name: text.to_owned(),
                        description: String::new(),
                    }
                };
                layers.checkpoint(&cmd.name, &cmd.description).await?;
            }
            Node::LayersSwitch => {
                let name = if text.starts_with('{') {
                    parse_json::<LayerCommand>(text)?.name
                } else {
                    text.to_owned()
                };
                layers.switch_to(&LayerRef::from(name)).await?;
                self.layers_changed();
            }
            Node::LayersDrop => {
                let cmd = if text.starts_with('{') {
                    parse_json::<LayerCommand>(text)?
                } else {
                    LayerCommand {
                        name: text.to_owned(),
                        force: false,
                    }
                };
                layers
                    .drop_layer(&LayerRef::from(cmd.name), cmd.force)
                    .await?;
                self.layers_changed();
            }
            _ => return Err(FsError::PermissionDenied),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_trimmed_text_or_json() {
        assert_eq!(command_text(b"  before\n").ok(), Some("before"));
        assert!(matches!(command_text(b"\n"), Err(FsError::BadInput(_))));
        assert!(matches!(command_text(&[0xff]), Err(FsError::BadInput(_))));
        let cmd: LayerCommand = parse_json(r#"{"name": "x", "force": true}"#).expect("valid");
        assert!(cmd.force && cmd.name == "x");
        assert!(parse_json::<LayerCommand>(r#"{"name": "x", "forse": true}"#).is_err());
    }

    #[test]
    fn percentages_have_one_decimal() {
        assert_eq!(percent(1, Some(3)), Some(33.3));
        assert_eq!(percent(5, None), None);
        assert_eq!(percent(0, Some(0)), Some(100.0));
    }
}
