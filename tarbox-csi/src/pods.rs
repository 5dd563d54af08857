//! Which pod a request comes from, without eBPF.
//!
//! One FUSE server serves a volume for every pod of the node that mounts it, so the server learns
//! the pod of each request from its pid: `/proc/<pid>/cgroup` names the pod's uid in the path
//! kubelet gives every container (cgroup v1 `kubepods/<qos>/pod<uid>/<container>`; v2 with the
//! systemd driver `kubepods-<qos>-pod<uid with _ for ->.slice/cri-containerd-<id>.scope` or
//! `crio-<id>.scope`; the `pod<uid>` token is matched wherever it is, since cgroup namespaces
//! make paths relative). The uid is mapped to the pod's namespace, name and service account that
//! NodePublishVolume received (the CSIDriver sets `podInfoOnMount: true`).
//!
//! Requests with no pod (pid 0: made by the kernel itself; processes outside any pod; a pod
//! that never published this volume) carry none. The node pods need `hostPID` so that request
//! pids are visible in the plugin's `/proc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tarbox_fs::PodIdentity;
use tarbox_fuse::PodResolver;

/// Volume context keys kubelet adds with `podInfoOnMount: true`.
pub(crate) const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub(crate) const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub(crate) const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub(crate) const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";

/// The pods that published volumes on this node, by uid, and which target each publish made.
#[derive(Debug, Default)]
pub(crate) struct PodRegistry {
    state: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    by_uid: HashMap<String, Arc<PodIdentity>>,
    /// Publish target → pod uid, so an unpublish forgets the pod once its last target is gone.
    targets: HashMap<PathBuf, String>,
}

impl PodRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember the pod a NodePublishVolume's context names, published at `target`.
    pub(crate) fn publish(&self, target: &Path, context: &HashMap<String, String>) {
        let (Some(uid), Some(name), Some(namespace)) = (
            context.get(POD_UID),
            context.get(POD_NAME),
            context.get(POD_NAMESPACE),
        ) else {
            return;
        };
        let identity = PodIdentity {
            namespace: namespace.clone(),
            name: name.clone(),
            service_account: context.get(SERVICE_ACCOUNT).cloned().unwrap_or_default(),
        };
        let uid = uid.to_ascii_lowercase();
        let mut r = self.lock();
        r.by_uid.insert(uid.clone(), Arc::new(identity));
        r.targets.insert(target.to_path_buf(), uid);
    }

    /// Forget the publish at `target`, and its pod when no other target of it is left.
    pub(crate) fn unpublish(&self, target: &Path) {
        let mut r = self.lock();
        if let Some(uid) = r.targets.remove(target) {
            if !r.targets.values().any(|u| *u == uid) {
                r.by_uid.remove(&uid);
            }
        }
    }

    fn pod(&self, uid: &str) -> Option<Arc<PodIdentity>> {
        self.lock().by_uid.get(uid).cloned()
    }
}

/// Resolves a request's pid to its pod through its cgroup and the registry.
#[derive(Debug)]
pub(crate) struct CgroupPods {
    registry: Arc<PodRegistry>,
    proc: PathBuf,
}

impl CgroupPods {
    pub(crate) fn new(registry: Arc<PodRegistry>) -> CgroupPods {
        CgroupPods {
            registry,
            proc: PathBuf::from("/proc"),
        }
    }
}

impl PodResolver for CgroupPods {
    fn pod_of(&self, pid: u32) -> Option<Arc<PodIdentity>> {
        if pid == 0 {
            return None;
        }
        let cgroups = std::fs::read_to_string(self.proc.join(format!("{pid}/cgroup"))).ok()?;
        let uid = pod_uid(&cgroups)?;
        self.registry.pod(&uid)
    }
}

/// The pod uid in a `/proc/<pid>/cgroup` text: the 36 characters after a `pod` token that form
/// a UUID (with `-` or, in systemd slice names, `_`), lower-cased with dashes.
pub(crate) fn pod_uid(cgroups: &str) -> Option<String> {
    for line in cgroups.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        let mut rest = path;
        while let Some(at) = rest.find("pod") {
            let after = &rest[at + 3..];
            if let Some(candidate) = after.get(..36) {
                let uid = candidate.replace('_', "-").to_ascii_lowercase();
                if is_uuid(&uid) {
                    return Some(uid);
                }
            }
            rest = after;
        }
    }
    None
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

    #[test]
    fn kubelet_cgroup_paths_name_the_pod() {
        let v1 = format!("8:pids:/kubepods/besteffort/pod{UID}/0123abcd\n0::/\n");
        assert_eq!(pod_uid(&v1).as_deref(), Some(UID));
        let v2 = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0123.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(pod_uid(&v2).as_deref(), Some(UID));
        let guaranteed = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-99.scope",
            UID.replace('-', "_")
        );
        assert_eq!(pod_uid(&guaranteed).as_deref(), Some(UID));
        // Relative to a cgroup namespace: only the pod's own part is left.
        assert_eq!(pod_uid(&format!("0::/../pod{UID}/c")).as_deref(), Some(UID));
    }

    #[test]
    fn other_processes_have_no_pod() {
        assert_eq!(pod_uid("0::/\n"), None);
        assert_eq!(pod_uid("0::/system.slice/podman.service\n"), None);
        assert_eq!(
            pod_uid("4:memory:/process_api/9b35c0a500762d6a18bfb30818fa33f2"),
            None
        );
    }

    #[test]
    fn the_registry_forgets_a_pod_with_its_last_target() {
        let r = PodRegistry::default();
        let ctx: HashMap<String, String> = [
            (POD_UID, UID),
            (POD_NAME, "trainer-0"),
            (POD_NAMESPACE, "ml"),
            (SERVICE_ACCOUNT, "trainer"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        r.publish(Path::new("/a"), &ctx);
        r.publish(Path::new("/b"), &ctx);
        assert_eq!(
            r.pod(UID).map(|p| p.name.clone()).as_deref(),
            Some("trainer-0")
        );
        r.unpublish(Path::new("/a"));
        assert!(r.pod(UID).is_some());
        r.unpublish(Path::new("/b"));
        assert!(r.pod(UID).is_none());
    }
}
