//! Layer changes of the memory backend: checkpoint, switch, drop, and the questions they ask.
//!
//! Each runs with the tenant's gate held (so no file-operation transaction is in flight) and the
//! store locked, and changes the store only after every check passed, so a failure leaves nothing
//! behind.

use std::collections::{BTreeMap, BTreeSet};

use super::{Store, TenantData};
use crate::backend::{LayerChanges, LayerRecord, LayerSwitch, TenantState};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, LayerId, TenantId, Timestamp};

/// The tenant's record must be active (or also retired, with `retired_too`) with `head` as its
/// head layer.
fn check_head(
    store: &Store,
    tenant: TenantId,
    head: LayerId,
    retired_too: bool,
) -> BackendResult<()> {
    let t = store.tenants.get(&tenant).ok_or(BackendError::TenantGone)?;
    let serves = t.state == TenantState::Active || (retired_too && t.state == TenantState::Retired);
    if !serves {
        return Err(BackendError::TenantGone);
    }
    if t.head_layer != head {
        return Err(BackendError::StaleView);
    }
    Ok(())
}

fn layer_mut(store: &mut Store, tenant: TenantId, id: LayerId) -> BackendResult<&mut LayerRecord> {
    store
        .layers
        .get_mut(&(tenant, id))
        .ok_or_else(|| BackendError::Corrupt(format!("tenant {} has no layer {id}", tenant.0)))
}

/// Create an empty unnamed layer on top of `parent` and make it the head.
fn push_head(
    store: &mut Store,
    tenant: TenantId,
    parent: LayerId,
    now: Timestamp,
) -> BackendResult<LayerRecord> {
    store.next_layer += 1;
    let record = LayerRecord {
        id: LayerId(store.next_layer),
        tenant,
        parent: Some(parent),
        name: None,
        description: String::new(),
        created_at: now,
        frozen_at: None,
        usage: None,
    };
    store.layers.insert((tenant, record.id), record.clone());
    store
        .tenants
        .get_mut(&tenant)
        .ok_or(BackendError::TenantGone)?
        .head_layer = record.id;
    Ok(record)
}

/// Mark the head frozen, recording the tenant's usage.
fn freeze(store: &mut Store, tenant: TenantId, head: LayerId, now: Timestamp) -> BackendResult<()> {
    let usage = store.tenant_data(tenant)?.usage;
    let layer = layer_mut(store, tenant, head)?;
    layer.frozen_at = Some(now);
    layer.usage = Some(usage);
    Ok(())
}

pub(super) fn checkpoint(
    store: &mut Store,
    tenant: TenantId,
    head: LayerId,
    name: &str,
    description: &str,
    now: Timestamp,
) -> BackendResult<LayerRecord> {
    check_head(store, tenant, head, false)?;
    let taken = store
        .layers
        .range((tenant, LayerId(i64::MIN))..=(tenant, LayerId(i64::MAX)))
        .any(|(_, l)| l.name.as_deref() == Some(name));
    if taken {
        return Err(BackendError::LayerExists);
    }
    freeze(store, tenant, head, now)?;
    let layer = layer_mut(store, tenant, head)?;
    layer.name = Some(name.to_owned());
    layer.description = description.to_owned();
    push_head(store, tenant, head, now)
}

pub(super) fn switch(
    store: &mut Store,
    tenant: TenantId,
    head: LayerId,
    target: LayerId,
    switch: LayerSwitch,
    now: Timestamp,
) -> BackendResult<LayerRecord> {
    check_head(store, tenant, head, false)?;
    if !store.layers.contains_key(&(tenant, target)) {
        return Err(BackendError::Corrupt(format!(
            "tenant {} has no layer {target}",
            tenant.0
        )));
    }
    let discard = switch.discard_head && is_empty(store.tenant_data(tenant)?, head);
    freeze(store, tenant, head, now)?;
    let record = push_head(store, tenant, target, now)?;
    if discard {
        store.layers.remove(&(tenant, head));
    }
    if let Some(usage) = switch.usage {
        store.tenant_data(tenant)?.usage = usage;
    }
    Ok(record)
}

pub(super) fn drop_layer(
    store: &mut Store,
    tenant: TenantId,
    head: LayerId,
    layer: LayerId,
    children: &[LayerId],
) -> BackendResult<()> {
    check_head(store, tenant, head, true)?;
    if layer == head {
        return Err(BackendError::Conflict);
    }
    let parent = store
        .layers
        .get(&(tenant, layer))
        .ok_or(BackendError::Conflict)?
        .parent;
    let actual: BTreeSet<LayerId> = store
        .layers
        .values()
        .filter(|l| l.tenant == tenant && l.parent == Some(layer))
        .map(|l| l.id)
        .collect();
    if actual != children.iter().copied().collect() {
        return Err(BackendError::Conflict);
    }
    let d = store.tenant_data(tenant)?;
    for &child in children {
        // Inodes the child removed: their data and attributes below are hidden for good, and
        // must not resurface as rows of the child (they would hold their blocks forever).
        let gone: BTreeSet<Ino> = d
            .inodes
            .iter()
            .filter(|((_, l), v)| *l == child && v.is_none())
            .map(|((ino, _), _)| *ino)
            .collect();
        let pair = (layer, child);
        copy_rows(&mut d.inodes, |k| k.1, |k, l| (k.0, l), pair, |_| true);
        copy_rows(
            &mut d.dentries,
            |k| k.2,
            |k, l| (k.0, k.1.clone(), l),
            pair,
            |_| true,
        );
        copy_rows(
            &mut d.xattrs,
            |k| k.2,
            |k, l| (k.0, k.1.clone(), l),
            pair,
            |k| !gone.contains(&k.0),
        );
        let copied = copy_rows(
            &mut d.block_map,
            |k| k.2,
            |k, l| (k.0, k.1, l),
            pair,
            |k| !gone.contains(&k.0),
        );
        for hash in copied.into_iter().flatten() {
            if let Some((_, count)) = d.blocks.get_mut(&hash) {
                *count += 1;
            }
        }
    }
    d.inodes.retain(|k, _| k.1 != layer);
    d.dentries.retain(|k, _| k.2 != layer);
    d.xattrs.retain(|k, _| k.2 != layer);
    let released: Vec<_> = d
        .block_map
        .iter()
        .filter(|(k, _)| k.2 == layer)
        .filter_map(|(_, h)| *h)
        .collect();
    d.block_map.retain(|k, _| k.2 != layer);
    for hash in released {
        d.unref(hash);
    }
    for l in store.layers.values_mut() {
        if l.tenant == tenant && l.parent == Some(layer) {
            l.parent = parent;
        }
    }
    store.layers.remove(&(tenant, layer));
    Ok(())
}

/// Copy the rows of layer `from` into layer `to` where `to` has no row of the same key; returns
/// the copied values.
fn copy_rows<K: Ord + Clone, V: Clone>(
    map: &mut BTreeMap<K, V>,
    layer_of: impl Fn(&K) -> LayerId,
    with_layer: impl Fn(&K, LayerId) -> K,
    (from, to): (LayerId, LayerId),
    keep: impl Fn(&K) -> bool,
) -> Vec<V> {
    let rows: Vec<(K, V)> = map
        .iter()
        .filter(|(k, _)| layer_of(k) == from && keep(k))
        .map(|(k, v)| (with_layer(k, to), v.clone()))
        .filter(|(k, _)| !map.contains_key(k))
        .collect();
    let mut copied = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        copied.push(v.clone());
        map.insert(k, v);
    }
    copied
}

pub(super) fn is_empty(d: &TenantData, layer: LayerId) -> bool {
    !(d.inodes.keys().any(|k| k.1 == layer)
        || d.dentries.keys().any(|k| k.2 == layer)
        || d.block_map.keys().any(|k| k.2 == layer)
        || d.xattrs.keys().any(|k| k.2 == layer))
}

pub(super) fn changes(d: &TenantData, layers: &[LayerId]) -> LayerChanges {
    let mut inodes = BTreeSet::new();
    inodes.extend(
        d.inodes
            .keys()
            .filter(|k| layers.contains(&k.1))
            .map(|k| k.0),
    );
    inodes.extend(
        d.block_map
            .keys()
            .filter(|k| layers.contains(&k.2))
            .map(|k| k.0),
    );
    inodes.extend(
        d.xattrs
            .keys()
            .filter(|k| layers.contains(&k.2))
            .map(|k| k.0),
    );
    let entries: BTreeSet<_> = d
        .dentries
        .keys()
        .filter(|k| layers.contains(&k.2))
        .map(|k| (k.0, k.1.clone()))
        .collect();
    LayerChanges {
        inodes: inodes.into_iter().collect(),
        entries: entries.into_iter().collect(),
    }
}
