//! The tenant's access policy (see [`crate::policy`]) as a volume applies it: which identity a
//! caller acts as, whether an operation may touch the paths it names, and which entries a
//! listing shows.
//!
//! The policy lives in the tenant's record; the volume compiles it when it opens and whenever the
//! head watch sees its text change, and a volume's checkpoint views share its copy. Callers are
//! compiled once per pod and kept, so a decision costs a map lookup, the path (from the audit
//! name cache, filled while a policy is in force) and a few matchers; callers the policy leaves
//! unrestricted (no pod, with `no_pod = "write"`) cost one map lookup.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tracing::{info, warn};

use super::audit::Subject;
use super::{Engine, Volume, lock};
use crate::audit::{AuditEvent, AuditOp, OpClass};
use crate::error::{FsError, FsResult};
use crate::policy::{AccessPolicy, CallerPolicy, Need, RefusedAs, Workload};
use std::future::Future;

use crate::types::{Caller, DirEntry, FileHandle, PodIdentity};

/// Pods whose compiled policy a volume keeps; past this the cache starts over.
const CALLERS_KEPT: usize = 4096;

/// A policy in force, with the callers compiled against it so far.
struct Compiled {
    policy: AccessPolicy,
    /// See [`AccessPolicy::anchors`].
    anchors: Vec<String>,
    no_pod: Arc<CallerPolicy>,
    pods: Mutex<HashMap<PodIdentity, Arc<CallerPolicy>>>,
}

impl Compiled {
    fn new(policy: AccessPolicy) -> Compiled {
        Compiled {
            no_pod: Arc::new(policy.for_caller(None)),
            anchors: policy.anchors(),
            policy,
            pods: Mutex::new(HashMap::new()),
        }
    }

    fn for_caller(&self, caller: &Caller) -> Arc<CallerPolicy> {
        let Some(pod) = caller.pod.as_deref() else {
            return self.no_pod.clone();
        };
        let mut pods = lock(&self.pods);
        if let Some(compiled) = pods.get(pod) {
            return compiled.clone();
        }
        let compiled = Arc::new(self.policy.for_caller(Some(&workload(pod))));
        if pods.len() >= CALLERS_KEPT {
            pods.clear();
        }
        pods.insert(pod.clone(), compiled.clone());
        compiled
    }
}

/// What a policy sees of a pod.
pub(crate) fn workload(pod: &PodIdentity) -> Workload<'_> {
    Workload {
        namespace: &pod.namespace,
        service_account: &pod.service_account,
        pod: &pod.name,
    }
}

/// A volume's policy state, shared with its checkpoint views.
#[derive(Default)]
pub(super) struct VolumeAccess {
    current: RwLock<Option<Arc<Compiled>>>,
}

impl VolumeAccess {
    fn compiled(&self) -> Option<Arc<Compiled>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Put the stored policy text in force, if it changed.
    pub(super) fn follow(&self, stored: Option<&str>, tenant: &str) {
        let current = self.compiled();
        if current.as_ref().map(|c| c.policy.source()) == stored {
            return;
        }
        let next = stored.map(|text| {
            let policy = AccessPolicy::parse(text).unwrap_or_else(|e| {
                warn!(tenant, error = %e, "stored access policy is invalid: refusing every pod");
                AccessPolicy::refusing_pods(text)
            });
            Arc::new(Compiled::new(policy))
        });
        if current.is_some() || next.is_some() {
            info!(
                tenant,
                rules = next.as_ref().map_or(0, |c| c.policy.rule_count()),
                "access policy in force"
            );
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// See [`AccessPolicy::anchors`]; empty without a policy.
    fn anchors(&self) -> Vec<String> {
        self.compiled().map_or_else(Vec::new, |c| c.anchors.clone())
    }

    /// Whether a policy is in force (so paths must be known).
    pub(super) fn is_active(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// What an operation needs of the paths its subject names, unless the call says otherwise.
pub(super) fn default_need(op: AuditOp) -> Option<Need> {
    match op.class() {
        OpClass::Change => Some(Need::Write),
        OpClass::Handle => None,
        // Reads and writes through a handle, and fsync, were decided when it was opened (as
        // POSIX checks permissions at open).
        OpClass::Access => match op {
            AuditOp::Read | AuditOp::Write | AuditOp::Fsync => None,
            _ => Some(Need::Read),
        },
    }
}

/// A refusal: the error and what the audit event says of it.
pub(super) struct Refusal {
    pub(super) error: FsError,
    pub(super) detail: String,
}

impl Volume {
    /// The policy as it applies to `caller`; `None` when nothing is restricted for it.
    fn caller_policy(&self, caller: &Caller) -> Option<Arc<CallerPolicy>> {
        let compiled = self.inner.access.compiled()?;
        let policy = compiled.for_caller(caller);
        (!policy.is_unrestricted()).then_some(policy)
    }

    /// The identity `caller` acts as under the policy (squashed, or itself).
    pub(crate) fn acting<'a>(&self, caller: &'a Caller) -> Cow<'a, Caller> {
        match self
            .caller_policy(caller)
            .and_then(|p| p.map_identity(caller))
        {
            Some(mapped) => Cow::Owned(mapped),
            None => Cow::Borrowed(caller),
        }
    }

    /// The policy text in force, for `/.tarbox/policy`.
    pub(crate) fn access_policy_source(&self) -> Option<String> {
        self.inner
            .access
            .compiled()
            .map(|c| c.policy.source().to_string())
    }

    /// Check `need` on every path `subject` names; the first refused one decides.
    pub(super) async fn admit(
        &self,
        caller: &Caller,
        op: AuditOp,
        subject: &Subject<'_>,
        need: Need,
    ) -> Result<(), Refusal> {
        let Some(policy) = self.caller_policy(caller) else {
            return Ok(());
        };
        let paths = self.subject_paths(subject).await;
        if let Some(path) = paths.iter().find(|p| p.starts_with('#')) {
            // Not reachable from the root by any name the engine could find: no rule can be
            // said to allow it.
            return Err(Refusal {
                error: FsError::PermissionDenied,
                detail: format!("access policy: {path} has no path to judge it by"),
            });
        }
        for path in paths.iter() {
            let decision = policy.decide(path, need);
            let Some(how) = decision.refusal() else {
                continue;
            };
            let detail = format!(
                "access policy: {} of {path} refused by {}",
                if need == Need::Write { "write" } else { "read" },
                decision.reason
            );
            let error = match how {
                RefusedAs::Denied => FsError::PermissionDenied,
                // Creating a name that exists is `EEXIST` before it is `EROFS`, as on a
                // read-only mount (`mkdir -p` relies on it).
                RefusedAs::ReadOnly if self.names_existing(op, subject).await => FsError::Exists,
                RefusedAs::ReadOnly => FsError::ReadOnly,
            };
            return Err(Refusal { error, detail });
        }
        if let Subject::Move(..) = subject {
            let anchors = self.inner.access.anchors();
            if let Some(path) = paths.iter().find(|p| is_at_or_above_any(p, &anchors)) {
                // Moving the directory a rule's paths start at, or one above it, would carry
                // what lies under it out of the rule (or into it); `mv` copies and deletes
                // instead, and each file is judged where it goes.
                return Err(Refusal {
                    error: FsError::CrossDevice,
                    detail: format!("access policy: {path} holds a path a rule names"),
                });
            }
        }
        Ok(())
    }

    /// Check `need` on a path of the control directory.
    pub(crate) fn admit_path(&self, caller: &Caller, path: &str, need: Need) -> FsResult<()> {
        let Some(policy) = self.caller_policy(caller) else {
            return Ok(());
        };
        match policy.decide(path, need).refusal() {
            None => Ok(()),
            Some(RefusedAs::Denied) => Err(FsError::PermissionDenied),
            Some(RefusedAs::ReadOnly) => Err(FsError::ReadOnly),
        }
    }

    /// The next page of the directory open as `fh` that `read` returns from an offset, without
    /// the entries `caller` may not reach. A page hidden whole is read past: an empty page would
    /// end the listing.
    pub(super) async fn reachable_page<T, F>(
        &self,
        caller: &Caller,
        fh: FileHandle,
        mut offset: u64,
        entry: impl Fn(&T) -> &DirEntry,
        read: impl Fn(u64) -> F,
    ) -> FsResult<Vec<T>>
    where
        F: Future<Output = FsResult<Vec<T>>>,
    {
        let Some(policy) = self.caller_policy(caller) else {
            return read(offset).await;
        };
        let Some(dir) = self.dir_of_handle(fh) else {
            return read(offset).await;
        };
        let base = self.path_of(dir).await;
        loop {
            let page = read(offset).await?;
            let Some(last) = page.last().map(|e| entry(e).next_offset) else {
                return Ok(page);
            };
            let kept: Vec<T> = page
                .into_iter()
                .filter(|e| {
                    let name = &entry(e).name;
                    name == b"." || name == b".." || {
                        let path = child_path_of(&base, name);
                        policy.decide(&path, Need::Read).allowed
                    }
                })
                .collect();
            if !kept.is_empty() {
                return Ok(kept);
            }
            offset = last;
        }
    }

    /// The paths an operation names, in the tenant's tree.
    async fn subject_paths(&self, subject: &Subject<'_>) -> Vec<Arc<str>> {
        match *subject {
            Subject::Ino(ino) => vec![self.path_of(ino).await],
            Subject::Child(parent, name) | Subject::Symlink(parent, name, _) => {
                vec![self.child_path(parent, name).await]
            }
            Subject::Move(p, n, np, nn) => {
                vec![self.child_path(p, n).await, self.child_path(np, nn).await]
            }
            // A new name of a file is a way to change it: both names need the grant.
            Subject::Link(ino, np, nn) => {
                vec![self.path_of(ino).await, self.child_path(np, nn).await]
            }
            Subject::Handle(fh, _) => match self.handle_path(fh).await {
                Some(p) => vec![p],
                None => Vec::new(),
            },
            Subject::Layer(_) => vec![Arc::from("/.tarbox/layers")],
        }
    }

    /// Whether `op` would create a name that already exists.
    async fn names_existing(&self, op: AuditOp, subject: &Subject<'_>) -> bool {
        let (parent, name) = match *subject {
            Subject::Child(p, n) | Subject::Symlink(p, n, _) | Subject::Link(_, p, n) => (p, n),
            _ => return false,
        };
        // Not `create`: without `O_EXCL` it would open the existing file, for writing, which is
        // what a read grant refuses (`EROFS`, as a read-only mount says).
        if !matches!(
            op,
            AuditOp::Mkdir | AuditOp::Mknod | AuditOp::Symlink | AuditOp::Link
        ) {
            return false;
        }
        if self.is_native_child(parent, name) {
            return self
                .native_lookup(&Caller::root(), parent, name)
                .await
                .is_ok();
        }
        matches!(self.reader().lookup(parent, name).await, Ok(Some(_)))
    }
}

/// Whether `path` is one of `anchors` or above one.
fn is_at_or_above_any(path: &str, anchors: &[String]) -> bool {
    anchors.iter().any(|a| {
        a.starts_with(path)
            && (a.len() == path.len() || path == "/" || a.as_bytes()[path.len()] == b'/')
    })
}

/// `base/name` as a path (`name` shown as the audit trail shows it).
pub(super) fn child_path_of(base: &str, name: &[u8]) -> String {
    let name = crate::audit::path_display(name);
    if base == "/" {
        format!("/{name}")
    } else {
        format!("{base}/{name}")
    }
}

impl Engine {
    /// Check and store a tenant's access policy (`None` removes it). Running mounts put it in
    /// force within their head-poll interval. The change is audited as `set_policy` by `caller`,
    /// whatever the tenant's audit level: who changed who may do what is always on record.
    pub async fn set_access_policy(
        &self,
        tenant: &str,
        policy: Option<&str>,
        caller: &Caller,
    ) -> FsResult<()> {
        let parsed = policy
            .map(AccessPolicy::parse)
            .transpose()
            .map_err(|e| FsError::BadInput(e.to_string()))?;
        let record = self.active_tenant(tenant).await?;
        self.shared
            .backend
            .set_access_policy(record.id, policy)
            .await?;
        let detail = match &parsed {
            Some(p) => format!(
                "access policy set: {} rules, blake3 {}",
                p.rule_count(),
                &blake3::hash(p.source().as_bytes()).to_hex()[..16]
            ),
            None => "access policy removed".to_string(),
        };
        let shared = &self.shared;
        let event = AuditEvent {
            seq: 0,
            time: shared.now(),
            tenant: Arc::from(record.name.as_str()),
            tenant_id: record.id,
            layer: record.head_layer,
            op: AuditOp::SetPolicy,
            path: Some(Arc::from("/.tarbox/policy")),
            path2: None,
            ino: None,
            offset: None,
            bytes: policy.map_or(0, |p| p.len() as u64),
            duration_us: 0,
            errno: 0,
            uid: caller.uid,
            gid: caller.gid,
            pid: caller.pid,
            process: shared.process_name(caller.pid),
            node: shared.node.clone(),
            mount: Arc::from("admin"),
            pod: caller.pod.clone(),
            handle: None,
            detail: Some(detail.into()),
            in_store: false,
        };
        shared.auditor.record(event).await;
        shared.auditor.flush().await;
        Ok(())
    }

    /// A tenant's access policy, parsed; `None` if it has none.
    pub async fn access_policy(&self, tenant: &str) -> FsResult<Option<AccessPolicy>> {
        let record = self.active_tenant(tenant).await?;
        Ok(match record.access_policy.as_deref() {
            None => None,
            Some(text) => Some(AccessPolicy::parse(text).map_err(|e| {
                FsError::BadInput(format!(
                    "the stored access policy of {tenant} is invalid: {e}"
                ))
            })?),
        })
    }
}
