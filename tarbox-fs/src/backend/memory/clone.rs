//! Cloning a tenant: the tree one layer view shows, flattened into the base layer of a new
//! tenant.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Store, TenantData};
use crate::backend::{BlockHash, LayerRecord, NewClone, TenantAudit, TenantRecord, TenantState};
use crate::error::{BackendError, BackendResult};
use crate::types::{Ino, LayerId};

/// The newest row of every key `chain` sees, the key being the map key without its layer.
/// Keys sort by `(key.., layer)` and ancestors have smaller ids, so the last row of a key that is
/// in the chain is the newest.
fn visible<'a, K, P: PartialEq, V>(
    map: &'a BTreeMap<K, V>,
    split: impl Fn(&K) -> (P, LayerId),
    chain: &[LayerId],
) -> Vec<(P, &'a V)> {
    let mut out: Vec<(P, &V)> = Vec::new();
    for (k, v) in map {
        let (key, layer) = split(k);
        if !chain.contains(&layer) {
            continue;
        }
        match out.last_mut() {
            Some((last, row)) if *last == key => *row = v,
            _ => out.push((key, v)),
        }
    }
    out
}

pub(super) fn clone_tenant(store: &mut Store, new: &NewClone) -> BackendResult<TenantRecord> {
    if store.tenants.values().any(|t| t.name == new.name) {
        return Err(BackendError::TenantExists);
    }
    let source = store
        .tenants
        .get(&new.source.tenant)
        .filter(|t| t.state != TenantState::Deleted)
        .ok_or(BackendError::TenantGone)?
        .clone();
    let chain = &new.source.chain;
    // A layer of the chain dropped since the view was built: the view shows another tree now.
    if !chain
        .iter()
        .all(|l| store.layers.contains_key(&(source.id, *l)))
    {
        return Err(BackendError::StaleView);
    }
    let src = store.data.get(&source.id).ok_or(BackendError::TenantGone)?;

    store.next_tenant += 1;
    store.next_layer += 1;
    let id = crate::types::TenantId(store.next_tenant);
    let base = LayerId(store.next_layer);

    let mut data = TenantData {
        next_ino: src.next_ino,
        ..TenantData::default()
    };
    let mut linked = BTreeSet::new();
    for (ino, row) in visible(&src.inodes, |k| (k.0, k.1), chain) {
        // Orphans (no name left, still open somewhere) stay with the source.
        if let Some(inode) = row.as_ref().filter(|i| i.nlink > 0) {
            linked.insert(ino);
            data.usage.bytes += inode.charged_bytes();
            data.usage.inodes += 1;
            data.inodes.insert((ino, base), Some(inode.clone()));
        }
    }
    for ((parent, name), row) in visible(&src.dentries, |k| ((k.0, k.1.clone()), k.2), chain) {
        if let Some(entry) = row.filter(|(ino, _, _)| linked.contains(ino)) {
            data.dentries.insert((parent, name, base), Some(entry));
        }
    }
    let mut refs: HashMap<_, u64> = HashMap::new();
    for ((ino, idx), row) in visible(&src.block_map, |k| ((k.0, k.1), k.2), chain) {
        if let Some(hash) = row.filter(|_| linked.contains(&ino)) {
            *refs.entry(hash).or_default() += 1;
            data.block_map.insert((ino, idx, base), Some(hash));
        }
    }
    // Each patched block copied holds one reference to each of its parts.
    let patched: Vec<BlockHash> = refs.keys().copied().collect();
    for hash in patched {
        if let Some((block, _)) = src.blocks.get(&hash) {
            for part in &block.parts {
                *refs.entry(*part).or_default() += 1;
            }
        }
    }
    for (hash, count) in refs {
        let (block, _) = src.blocks.get(&hash).ok_or_else(|| {
            BackendError::Corrupt(format!("tenant {} maps a missing block", source.id.0))
        })?;
        data.blocks.insert(hash, (block.clone(), count));
    }
    for ((ino, name), row) in visible(&src.xattrs, |k| ((k.0, k.1.clone()), k.2), chain) {
        if let Some(value) = row.as_ref().filter(|_| linked.contains(&ino)) {
            data.xattrs.insert((ino, name, base), Some(value.clone()));
        }
    }
    if !linked.contains(&Ino::ROOT) {
        return Err(BackendError::Corrupt(format!(
            "tenant {} has no root directory in layer {}",
            source.id.0,
            new.source.head()
        )));
    }

    let record = TenantRecord {
        id,
        name: new.name.clone(),
        state: TenantState::Active,
        head_layer: base,
        block_size: source.block_size,
        compression: source.compression,
        quota: new.quota,
        created_at: new.created_at,
        auto_checkpoint_secs: None,
        audit: TenantAudit::default(),
        owner: new.owner.clone(),
        access_policy: None,
        native_mounts: None,
        data_url: source.data_url.clone(),
    };
    store.layers.insert(
        (id, base),
        LayerRecord {
            id: base,
            tenant: id,
            parent: None,
            name: None,
            description: format!("clone of {} at layer {}", source.name, new.source.head()),
            created_at: new.created_at,
            frozen_at: None,
            usage: None,
        },
    );
    store.data.insert(id, data);
    store.tenants.insert(id, record.clone());
    Ok(record)
}
