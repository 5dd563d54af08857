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
use std::path::PathBuf;
use std::sync::Arc;

use tarbox_fs::PodIdentity;
use tarbox_fuse::PodResolver;

use crate::state::StateDir;

/// Volume context keys kubelet adds with `podInfoOnMount: true`.
pub(crate) const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub(crate) const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub(crate) const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub(crate) const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";

/// The pod a NodePublishVolume's context names: its uid (lower case) and identity.
pub(crate) fn pod_of_context(context: &HashMap<String, String>) -> Option<(String, PodIdentity)> {
    let (uid, name, namespace) = (
        context.get(POD_UID)?,
        context.get(POD_NAME)?,
        context.get(POD_NAMESPACE)?,
    );
    let identity = PodIdentity {
        namespace: namespace.clone(),
        name: name.clone(),
        service_account: context.get(SERVICE_ACCOUNT).cloned().unwrap_or_default(),
    };
    Some((uid.to_ascii_lowercase(), identity))
}

/// Resolves a request's pid to its pod through its cgroup and the publishes recorded in the
/// node's state directory: a pod is known while one of its targets is published on the node,
/// and a FUSE server in its own process sees the publishes the plugin records.
#[derive(Debug)]
pub(crate) struct CgroupPods {
    state: StateDir,
    proc: PathBuf,
}

impl CgroupPods {
    pub(crate) fn new(state: StateDir) -> CgroupPods {
        CgroupPods {
            state,
            proc: PathBuf::from("/proc"),
        }
    }

    fn pod(&self, uid: &str) -> Option<Arc<PodIdentity>> {
        let publishes = self.state.publishes_made().ok()?;
        publishes
            .into_iter()
            .filter_map(|p| p.pod)
            .find(|(u, _)| u == uid)
            .map(|(_, identity)| Arc::new(identity))
    }
}

impl PodResolver for CgroupPods {
    fn pod_of(&self, pid: u32) -> Option<Arc<PodIdentity>> {
        if pid == 0 {
            return None;
        }
        let cgroups = std::fs::read_to_string(self.proc.join(format!("{pid}/cgroup"))).ok()?;
        let uid = pod_uid(&cgroups)?;
        self.pod(&uid)
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
    fn a_pod_is_known_while_one_of_its_targets_is_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let pods = CgroupPods::new(state.clone());
        let ctx: HashMap<String, String> = [
            (POD_UID, UID.to_uppercase().as_str()),
            (POD_NAME, "trainer-0"),
            (POD_NAMESPACE, "ml"),
            (SERVICE_ACCOUNT, "trainer"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let pod = pod_of_context(&ctx);
        for target in ["/a", "/b"] {
            let record = crate::state::PublishRecord {
                volume_id: "1".into(),
                target: target.into(),
                readonly: false,
                pod: pod.clone(),
            };
            state.put_publish(&record).expect("publish");
        }
        assert_eq!(
            pods.pod(UID).map(|p| p.name.clone()).as_deref(),
            Some("trainer-0")
        );
        state
            .remove_publish(std::path::Path::new("/a"))
            .expect("unpublish");
        assert!(pods.pod(UID).is_some());
        state
            .remove_publish(std::path::Path::new("/b"))
            .expect("unpublish");
        assert!(pods.pod(UID).is_none());
        assert!(pod_of_context(&HashMap::new()).is_none());
    }
}
