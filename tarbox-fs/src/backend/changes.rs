//! The change feed: how engines sharing a store hear what the others committed.
//!
//! An engine caches inodes and names (`engine/meta_cache.rs`). After each commit it *announces*
//! what the transaction changed ([`Backend::announce`](super::Backend::announce)); every other
//! engine *watching* the tenant ([`Backend::watch`](super::Backend::watch)) drops those keys
//! from its cache and tells its kernel. Delivery is asynchronous and in order per announcing
//! engine. A feed that may have lost notes says so ([`FeedEvent::Lost`]), and says
//! [`FeedEvent::Resumed`] once it delivers again: a watcher serves nothing from its cache in
//! between, and starts afresh after.
//!
//! The notes travel outside the transactions they describe (PostgreSQL's `NOTIFY` inside a
//! transaction takes a database-wide lock at commit, which measured halved the commit rate of
//! eight concurrent writers), so an engine that dies between its commit and its announcement
//! leaves the others' caches stale for that key until it expires (`EngineConfig::meta_cache_ttl`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use crate::types::{Ino, TenantId};

/// One thing a committed transaction changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// The inode's attributes changed, or it was removed.
    Inode(Ino),
    /// The name was bound, rebound or removed in the directory.
    Entry(Ino, Vec<u8>),
    /// Anything may have changed (a layer switch, or a note too large to list).
    Tree,
}

/// What one transaction of one engine changed in one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNote {
    pub tenant: TenantId,
    /// The announcing engine's session: an engine skips its own notes.
    pub origin: u64,
    pub changes: Vec<Change>,
}

/// What a watcher hears.
#[derive(Debug, Clone, Copy)]
pub enum FeedEvent<'a> {
    Note(&'a ChangeNote),
    /// Notes may have been lost (the feed's connection dropped): trust nothing cached.
    Lost,
    /// The feed delivers again (or for the first time): every change from now on will be heard.
    Resumed,
}

/// Called with every event of a watched tenant, on the feed's task: must not block.
pub type ChangeListener = Arc<dyn Fn(FeedEvent<'_>) + Send + Sync>;

/// Registered listeners, by tenant. Backends deliver through it.
#[derive(Default)]
pub(crate) struct Listeners {
    inner: Mutex<ListenersInner>,
}

#[derive(Default)]
struct ListenersInner {
    next: u64,
    by_tenant: HashMap<TenantId, Vec<(u64, ChangeListener)>>,
}

impl fmt::Debug for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners").finish_non_exhaustive()
    }
}

impl Listeners {
    fn lock(&self) -> std::sync::MutexGuard<'_, ListenersInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `listener` for `tenant`; it hears nothing more once the watch is dropped.
    pub(crate) fn add(self: &Arc<Self>, tenant: TenantId, listener: ChangeListener) -> Watch {
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        inner
            .by_tenant
            .entry(tenant)
            .or_default()
            .push((id, listener));
        Watch {
            listeners: Arc::downgrade(self),
            tenant,
            id,
        }
    }

    /// Deliver a note to the listeners of its tenant.
    pub(crate) fn deliver(&self, note: &ChangeNote) {
        let listeners: Vec<ChangeListener> = match self.lock().by_tenant.get(&note.tenant) {
            Some(l) => l.iter().map(|(_, l)| l.clone()).collect(),
            None => return,
        };
        for listener in listeners {
            listener(FeedEvent::Note(note));
        }
    }

    /// Tell every listener of every tenant (`Lost` or `Resumed`).
    pub(crate) fn tell_all(&self, event: FeedEvent<'_>) {
        let listeners: Vec<ChangeListener> = self
            .lock()
            .by_tenant
            .values()
            .flatten()
            .map(|(_, l)| l.clone())
            .collect();
        for listener in listeners {
            listener(event);
        }
    }
}

/// A registration with a change feed; dropping it stops delivery.
pub struct Watch {
    listeners: Weak<Listeners>,
    tenant: TenantId,
    id: u64,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(listeners) = self.listeners.upgrade() else {
            return;
        };
        let mut inner = listeners.lock();
        if let Some(list) = inner.by_tenant.get_mut(&self.tenant) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                inner.by_tenant.remove(&self.tenant);
            }
        }
    }
}

/// Notes as text (PostgreSQL `NOTIFY` payloads): `tenant origin change…`, each change `i<ino>`,
/// `e<parent>:<name as hex>` or `t`, separated by spaces. Long notes are split so that no
/// payload exceeds `limit` bytes.
pub(crate) fn encode(note: &ChangeNote, limit: usize) -> Vec<String> {
    let head = format!("{} {}", note.tenant.0, note.origin);
    let mut out = Vec::new();
    let mut current = head.clone();
    for change in &note.changes {
        let token = match change {
            Change::Inode(ino) => format!("i{}", ino.0),
            Change::Entry(parent, name) => {
                let mut t = format!("e{}:", parent.0);
                for b in name {
                    t.push_str(&format!("{b:02x}"));
                }
                t
            }
            Change::Tree => "t".to_string(),
        };
        if current.len() + 1 + token.len() > limit && current.len() > head.len() {
            out.push(std::mem::replace(&mut current, head.clone()));
        }
        current.push(' ');
        current.push_str(&token);
    }
    if current.len() > head.len() {
        out.push(current);
    }
    out
}

/// The inverse of [`encode`]; `None` for a payload that is not a note. A token it does not
/// understand becomes [`Change::Tree`]: a newer engine's note still empties older caches.
pub(crate) fn decode(payload: &str) -> Option<ChangeNote> {
    let mut parts = payload.split(' ');
    let tenant = TenantId(parts.next()?.parse().ok()?);
    let origin = parts.next()?.parse().ok()?;
    let changes = parts
        .map(|token| decode_change(token).unwrap_or(Change::Tree))
        .collect();
    Some(ChangeNote {
        tenant,
        origin,
        changes,
    })
}

fn decode_change(token: &str) -> Option<Change> {
    if token == "t" {
        return Some(Change::Tree);
    }
    if let Some(ino) = token.strip_prefix('i') {
        return Some(Change::Inode(Ino(ino.parse().ok()?)));
    }
    let (parent, hex) = token.strip_prefix('e')?.split_once(':')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let name = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(Change::Entry(Ino(parent.parse().ok()?), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_survive_encoding_and_split_at_the_limit() {
        let note = ChangeNote {
            tenant: TenantId(7),
            origin: 42,
            changes: vec![
                Change::Inode(Ino(5)),
                Change::Entry(Ino(1), b"a b\xff\0".to_vec()),
                Change::Tree,
                Change::Entry(Ino(9), Vec::new()),
            ],
        };
        let one = encode(&note, 8000);
        assert_eq!(one.len(), 1);
        assert_eq!(decode(&one[0]), Some(note.clone()));
        let split = encode(&note, 16);
        assert!(split.len() > 1);
        let changes: Vec<Change> = split
            .iter()
            .flat_map(|p| decode(p).expect("decodes").changes)
            .collect();
        assert_eq!(changes, note.changes);
    }

    #[test]
    fn unknown_tokens_empty_the_cache_and_garbage_is_no_note() {
        let note = decode("3 4 i1 zz e1:f").expect("a note");
        assert_eq!(
            note.changes,
            vec![Change::Inode(Ino(1)), Change::Tree, Change::Tree]
        );
        assert_eq!(decode("x 4 i1"), None);
        assert_eq!(decode(""), None);
    }
}
