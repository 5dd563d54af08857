//! StorageClass parameters of CreateVolume, checked whole before anything is created: an unknown
//! key or a bad value is one error naming the key and what is wrong with the value.

use std::collections::HashMap;
use std::time::Duration;

use tarbox_fs::{AuditLevel, Compression};

/// Prefix of the keys the CSI sidecars add (PVC metadata, secret references): accepted as is.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";
const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";

pub(crate) const AUDIT_LEVEL: &str = "auditLevel";
pub(crate) const AUDIT_RETENTION_DAYS: &str = "auditRetentionDays";
pub(crate) const AUTO_CHECKPOINT: &str = "autoCheckpoint";
pub(crate) const CHECKPOINT_INTERVAL: &str = "checkpointInterval";
pub(crate) const BLOCK_SIZE: &str = "blockSize";
pub(crate) const COMPRESSION: &str = "compression";
pub(crate) const INODE_QUOTA: &str = "inodeQuota";
pub(crate) const CACHE_SIZE: &str = "cacheSize";
pub(crate) const MEMORY_CACHE_SIZE: &str = "memoryCacheSize";
pub(crate) const DATA_STORE: &str = "dataStore";
pub(crate) const ACCESS_POLICY: &str = "accessPolicy";
pub(crate) const NATIVE_MOUNTS: &str = "nativeMounts";

/// The smallest cache (memory or disk) a volume server may be given; `cacheSize: 0` turns the
/// disk cache off.
const MIN_CACHE: u64 = 4 << 20;

/// Automatic checkpoints when `autoCheckpoint` is on without an interval.
const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(3600);

/// What a StorageClass asks of a new volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VolumeParams {
    pub pvc: Option<(String, String)>,
    pub audit_level: Option<AuditLevel>,
    pub audit_retention_days: Option<u32>,
    pub checkpoint_interval: Option<Duration>,
    pub block_size: Option<u32>,
    pub compression: Option<Compression>,
    pub inode_quota: Option<u64>,
    /// The on-disk block cache of each node's FUSE server for the volume, in bytes (0: none).
    pub cache_bytes: Option<u64>,
    /// The in-memory block cache of each node's FUSE server for the volume, in bytes.
    pub memory_cache_bytes: Option<u64>,
    /// Where the volume's file data lives (`None`: in the database).
    pub data_url: Option<String>,
    /// The volume's pod-level access policy (TOML, checked), if any.
    pub access_policy: Option<String>,
    /// Native mounts made with the volume (TOML `[[native_mounts]]`, checked): its own go with
    /// it, `shared = true` ones stay for every tenant.
    pub native_mounts: Vec<tarbox_fs::native::NativeMount>,
}

impl VolumeParams {
    /// The PVC as `(namespace, name)`, if the provisioner passed it.
    pub fn pvc(&self) -> Option<(&str, &str)> {
        self.pvc.as_ref().map(|(ns, n)| (ns.as_str(), n.as_str()))
    }
}

/// Parse `parameters`; `Err` names the first bad key and why.
pub(crate) fn parse(parameters: &HashMap<String, String>) -> Result<VolumeParams, String> {
    let mut p = VolumeParams::default();
    let mut auto = None;
    // Sorted, so the error for several bad keys is always about the same one.
    let mut keys: Vec<&String> = parameters.keys().collect();
    keys.sort();
    for key in keys {
        let value = parameters[key].as_str();
        let bad = |why: &str| format!("parameter {key}={value:?}: {why}");
        match key.as_str() {
            AUDIT_LEVEL => {
                p.audit_level = Some(
                    value
                        .parse()
                        .map_err(|_| bad("expected off, basic, standard or full"))?,
                );
            }
            AUDIT_RETENTION_DAYS => {
                let days: u32 = value
                    .parse()
                    .map_err(|_| bad("expected a whole number of days"))?;
                if days == 0 {
                    return Err(bad("must be at least 1 day"));
                }
                p.audit_retention_days = Some(days);
            }
            AUTO_CHECKPOINT => {
                auto = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("expected true or false")),
                });
            }
            CHECKPOINT_INTERVAL => {
                let d = humantime::parse_duration(value)
                    .map_err(|e| bad(&format!("expected a duration like 15m ({e})")))?;
                if d < Duration::from_secs(1) {
                    return Err(bad("must be at least 1s"));
                }
                p.checkpoint_interval = Some(d);
            }
            BLOCK_SIZE => {
                let size = parse_size(value).ok_or_else(|| bad("expected a size like 256KiB"))?;
                let ok = size.is_power_of_two() && (4096..=4 << 20).contains(&size);
                if !ok {
                    return Err(bad("must be a power of two from 4KiB to 4MiB"));
                }
                p.block_size = u32::try_from(size).ok();
            }
            COMPRESSION => {
                p.compression = Some(match value {
                    "zstd" => Compression::Zstd,
                    "none" => Compression::None,
                    _ => return Err(bad("expected zstd or none")),
                });
            }
            INODE_QUOTA => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| bad("expected a number of inodes"))?;
                if n < 2 {
                    return Err(bad("must allow at least 2 inodes (the root and one file)"));
                }
                p.inode_quota = Some(n);
            }
            CACHE_SIZE => {
                let size = parse_size(value).ok_or_else(|| bad("expected a size like 10GiB"))?;
                if size != 0 && size < MIN_CACHE {
                    return Err(bad("must be 0 (no disk cache) or at least 4MiB"));
                }
                p.cache_bytes = Some(size);
            }
            MEMORY_CACHE_SIZE => {
                let size = parse_size(value).ok_or_else(|| bad("expected a size like 512MiB"))?;
                if size < MIN_CACHE {
                    return Err(bad("must be at least 4MiB"));
                }
                p.memory_cache_bytes = Some(size);
            }
            DATA_STORE => {
                if value != "postgres" {
                    tarbox_fs::store::validate_data_url(value).map_err(|e| bad(&e.to_string()))?;
                    p.data_url = Some(value.to_string());
                }
            }
            ACCESS_POLICY => {
                tarbox_fs::policy::AccessPolicy::parse(value)
                    .map_err(|e| format!("parameter {key} is not a valid access policy: {e}"))?;
                p.access_policy = Some(value.to_string());
            }
            NATIVE_MOUNTS => {
                p.native_mounts = tarbox_fs::native::parse(value)
                    .map_err(|e| format!("parameter {key} is refused: {e}"))?;
            }
            crate::databases::SECRET_DATABASE_URL => {
                return Err(format!(
                    "parameter {key} is refused: a URL here is readable by anyone who can read \
                     StorageClasses, and DeleteVolume never sees it; put it under the key {key} \
                     of the secret csi.storage.k8s.io/provisioner-secret-name names (and the \
                     node-stage, snapshotter and controller-expand secrets)"
                ));
            }
            k if k.starts_with(SIDECAR_PREFIX) => {}
            _ => {
                return Err(format!(
                    "unknown parameter {key:?} (known: {AUDIT_LEVEL}, {AUDIT_RETENTION_DAYS}, \
                     {AUTO_CHECKPOINT}, {CHECKPOINT_INTERVAL}, {BLOCK_SIZE}, {COMPRESSION}, \
                     {INODE_QUOTA}, {CACHE_SIZE}, {MEMORY_CACHE_SIZE}, {DATA_STORE}, \
                     {ACCESS_POLICY}, {NATIVE_MOUNTS})"
                ));
            }
        }
    }
    p.pvc = match (parameters.get(PVC_NAMESPACE), parameters.get(PVC_NAME)) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Some((ns.clone(), name.clone()))
        }
        _ => None,
    };
    match (auto, p.checkpoint_interval) {
        (Some(false), Some(_)) => {
            return Err(format!(
                "parameter {CHECKPOINT_INTERVAL} is set but {AUTO_CHECKPOINT} is false"
            ));
        }
        (Some(true), None) => p.checkpoint_interval = Some(DEFAULT_CHECKPOINT_INTERVAL),
        _ => {}
    }
    Ok(p)
}

/// `4096`, `256KiB`, `4MiB`, `1GiB` (binary units; `K`, `M`, `G` mean the same).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "Ki" => 10,
        "M" | "MiB" | "Mi" => 20,
        "G" | "GiB" | "Gi" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any parameters a StorageClass may hold: volume parameters, or one error that names
        /// a key of the request.
        #[test]
        fn any_parameters_parse_or_name_a_key(params in prop::collection::hash_map(
            prop_oneof![
                Just(AUDIT_LEVEL.to_string()), Just(BLOCK_SIZE.to_string()),
                Just(CACHE_SIZE.to_string()), Just(DATA_STORE.to_string()),
                Just(ACCESS_POLICY.to_string()), Just(CHECKPOINT_INTERVAL.to_string()),
                Just(AUTO_CHECKPOINT.to_string()), Just(INODE_QUOTA.to_string()),
                "[a-zA-Z./-]{0,16}",
            ],
            ".{0,40}",
            0..6,
        )) {
            if let Err(e) = parse(&params) {
                prop_assert!(params.keys().any(|k| e.contains(k.as_str())), "{}", e);
            }
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_parameter_parses() {
        let p = parse(&map(&[
            (AUDIT_LEVEL, "full"),
            (AUDIT_RETENTION_DAYS, "90"),
            (AUTO_CHECKPOINT, "true"),
            (CHECKPOINT_INTERVAL, "15m"),
            (BLOCK_SIZE, "64KiB"),
            (COMPRESSION, "none"),
            (INODE_QUOTA, "100000"),
            (CACHE_SIZE, "1Gi"),
            (MEMORY_CACHE_SIZE, "64Mi"),
            (PVC_NAMESPACE, "ml"),
            (PVC_NAME, "data"),
            ("csi.storage.k8s.io/provisioner-secret-name", "db"),
        ]))
        .expect("valid");
        assert_eq!(p.audit_level, Some(AuditLevel::Full));
        assert_eq!(p.checkpoint_interval, Some(Duration::from_secs(900)));
        assert_eq!(p.block_size, Some(65536));
        assert_eq!(p.cache_bytes, Some(1 << 30));
        assert_eq!(p.memory_cache_bytes, Some(64 << 20));
        let off = parse(&map(&[(CACHE_SIZE, "0")])).expect("no disk cache");
        assert_eq!(off.cache_bytes, Some(0));
        assert_eq!(p.pvc(), Some(("ml", "data")));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (k, v) in [
            (AUDIT_LEVEL, "loud"),
            (BLOCK_SIZE, "3000"),
            (BLOCK_SIZE, "8MiB"),
            (INODE_QUOTA, "-1"),
            (CHECKPOINT_INTERVAL, "soon"),
            (AUTO_CHECKPOINT, "yes"),
            (CACHE_SIZE, "1KiB"),
            (MEMORY_CACHE_SIZE, "0"),
        ] {
            let e = parse(&map(&[(k, v)])).expect_err("invalid");
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
        let e = parse(&map(&[(
            ACCESS_POLICY,
            "[[rules]]\nnamespace = \"ML\"\naccess = \"read\"\n",
        )]))
        .expect_err("a rule that never matches");
        assert!(
            e.contains(ACCESS_POLICY) && e.contains("line 1") && e.contains("lowercase"),
            "{e}"
        );
        let policy = "[defaults]\npods = \"read\"\n";
        let p = parse(&map(&[(ACCESS_POLICY, policy)])).expect("valid policy");
        assert_eq!(p.access_policy.as_deref(), Some(policy));
        let e = parse(&map(&[("blocksize", "4096")])).expect_err("unknown");
        assert!(e.contains("unknown parameter \"blocksize\""), "{e}");
        let store = |v: &str| parse(&HashMap::from([(DATA_STORE.to_string(), v.to_string())]));
        assert_eq!(store("postgres").expect("default").data_url, None);
        assert_eq!(
            store("file:///srv/blocks")
                .expect("file")
                .data_url
                .as_deref(),
            Some("file:///srv/blocks")
        );
        let e = store("file://srv").expect_err("relative path");
        assert!(e.contains("dataStore") && e.contains("absolute"), "{e}");
    }
}
