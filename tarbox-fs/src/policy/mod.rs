//! Pod-level access policy: which Kubernetes workloads may read or write which paths of a tenant's
//! tree, and as which identity.
//!
//! A policy is TOML, stored with the tenant and applied by the engine to every operation after
//! the POSIX checks would have allowed it: it can only take permissions away, never grant what
//! the mode bits refuse.
//!
//! ```toml
//! [defaults]
//! pods = "none"       # a pod that no rule grants anything
//! no_pod = "write"    # callers without a pod: the CLI, a plain `tarbox mount`
//!
//! [[rules]]
//! name = "datasets are read-only"
//! paths = ["/datasets"]
//! access = "read"
//!
//! [[rules]]
//! name = "each trainer writes its own checkpoints"
//! namespace = "ml"
//! service_account = "trainer"
//! paths = ["/checkpoints/{pod}"]
//! access = "write"
//!
//! [[rules]]
//! name = "root is nobody"
//! squash = "root"
//! ```
//!
//! Rules are ordered. For an operation on a path, the first rule whose caller selector
//! (`namespace`, `service_account`, `pod`: globs, absent means any) matches the caller and whose
//! `paths` match the path decides; no such rule leaves the decision to the default. A path is a
//! prefix (`/datasets` covers `/datasets` and everything below it) unless it has glob characters
//! (`*` stays within one component, `**` crosses them). `{namespace}`, `{service_account}` and
//! `{pod}` are replaced by the caller's own. The identity of a caller is mapped by the first rule
//! that matches it and has `squash` (`root`: uid and gid 0 become `uid`/`gid`, 65534 unless
//! given; `all`: every uid and gid does).
//!
//! A caller may look up, stat and list the directories above a path it may read or write, or it
//! could never reach that path; listings leave out the entries it may not reach. A write needed
//! where the caller may only read fails with `EROFS`, anything refused otherwise with `EACCES`.
//!
//! [`AccessPolicy::parse`] refuses a policy that does not parse, or a rule that can never match
//! (a selector no Kubernetes name satisfies, a rule wholly shadowed by an earlier one), with the
//! line and the reason. Deciding costs no store round trip: [`AccessPolicy::for_caller`] compiles
//! the rules that concern one caller once, and the engine keeps them per caller.

mod caller;
mod parse;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use caller::{CallerPolicy, Decision, Reason, RefusedAs};
pub use parse::PolicyError;

/// What a rule or default grants on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    None,
    Read,
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation needs on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Look up, stat, list, open for reading, read, read attributes.
    Read,
    /// Anything that changes the path or what it holds.
    Write,
}

impl Need {
    fn as_access(self) -> Access {
        match self {
            Need::Read => Access::Read,
            Need::Write => Access::Write,
        }
    }
}

impl FromStr for Need {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Need::Read),
            "write" => Ok(Need::Write),
            other => Err(format!(
                "unknown operation {other:?}: expected read or write"
            )),
        }
    }
}

/// How a rule maps the identity of the callers it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Squash {
    /// uid 0 becomes `uid`, gid 0 becomes `gid` (NFS `root_squash`).
    Root { uid: u32, gid: u32 },
    /// Every caller becomes `uid`/`gid`, without supplementary groups (NFS `all_squash`).
    All { uid: u32, gid: u32 },
}

/// Who is asking, as far as a policy cares: a pod's namespace, service account and name, or no
/// pod at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub pod: &'a str,
}

/// A caller selector field: a glob over Kubernetes names, or any.
#[derive(Debug, Clone)]
struct NameGlob {
    text: Option<String>,
    matcher: Option<globset::GlobMatcher>,
}

impl NameGlob {
    fn matches(&self, name: &str) -> bool {
        self.matcher.as_ref().is_none_or(|m| m.is_match(name))
    }

    fn is_any(&self) -> bool {
        self.text.as_deref().is_none_or(|t| t == "*")
    }

    /// Whether every name this selects is selected by `self` too (conservatively: `self` is any,
    /// or both are the same text).
    fn covers(&self, other: &NameGlob) -> bool {
        self.is_any() || self.text == other.text
    }
}

/// One rule as parsed, before it is specialised for a caller.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    line: usize,
    namespace: NameGlob,
    service_account: NameGlob,
    pod: NameGlob,
    /// Path templates, placeholders unsubstituted; empty with `access` means every path.
    paths: Vec<String>,
    access: Option<Access>,
    squash: Option<Squash>,
}

impl Rule {
    fn selects(&self, w: &Workload<'_>) -> bool {
        self.namespace.matches(w.namespace)
            && self.service_account.matches(w.service_account)
            && self.pod.matches(w.pod)
    }

    fn selects_all_of(&self, other: &Rule) -> bool {
        self.namespace.covers(&other.namespace)
            && self.service_account.covers(&other.service_account)
            && self.pod.covers(&other.pod)
    }
}

/// A tenant's access policy, parsed and checked. Keeps its source text: what `policy show` and
/// `/.tarbox/policy` print is what was set.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    source: String,
    pods_default: Access,
    no_pod_default: Access,
    rules: Vec<Rule>,
}

impl AccessPolicy {
    /// Parse and check a policy; the error names the line and the reason.
    pub fn parse(source: &str) -> Result<AccessPolicy, PolicyError> {
        parse::parse(source)
    }

    /// What a volume enforces if its stored policy `source` no longer parses (it was checked
    /// when set, so only a hand-edited database gets here): every pod is refused everything.
    pub(crate) fn refusing_pods(source: &str) -> AccessPolicy {
        AccessPolicy {
            source: source.to_string(),
            pods_default: Access::None,
            no_pod_default: Access::Write,
            rules: Vec::new(),
        }
    }

    /// The TOML the policy was set from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many rules it has.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The literal directories the rules' paths start at (before any glob or placeholder), over
    /// every rule: a restricted caller cannot rename one of them or a directory above one, or
    /// the paths under it would leave (or enter) the rule with the data.
    pub fn anchors(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.access.is_some())
            .flat_map(|r| r.paths.iter().map(|p| parse::literal_dir(p).to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The rules that concern `workload` (`None`: a caller without a pod), compiled.
    pub fn for_caller(&self, workload: Option<&Workload<'_>>) -> CallerPolicy {
        CallerPolicy::compile(self, workload)
    }
}
