//! A policy specialised for one caller: the rules that select it, with its names substituted and
//! its globs compiled, so a decision is a walk over a few matchers and no store round trip.

use std::fmt;
use std::sync::Arc;

use super::parse::{is_glob, is_under, literal_dir, substitute};
use super::{Access, AccessPolicy, Need, Squash, Workload};
use crate::types::Caller;

/// A path a rule applies to, for one caller.
#[derive(Debug, Clone)]
enum PathMatch {
    Prefix(String),
    /// A glob, and the literal directory everything it matches is under: most paths are told
    /// apart by that prefix without running the glob.
    Glob(globset::GlobMatcher, String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(dir) => is_under(path, dir),
            PathMatch::Glob(glob, dir) => is_under(path, dir) && glob.is_match(path),
        }
    }
}

/// Which rule, or which default, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched the caller and the path.
    Rule { name: Arc<str>, line: usize },
    /// No rule matched; the default for pods (or for callers without one) decided.
    Default { pod: bool },
    /// No rule matched, but the path is a directory above one the rule lets the caller reach.
    Above { name: Arc<str>, line: usize },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule { name, line } => write!(f, "rule {name:?} (line {line})"),
            Reason::Default { pod: true } => f.write_str("the default for pods"),
            Reason::Default { pod: false } => f.write_str("the default for callers without a pod"),
            Reason::Above { name, line } => {
                write!(
                    f,
                    "a directory above what rule {name:?} (line {line}) grants"
                )
            }
        }
    }
}

/// The answer for one path and need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// What the caller may do on the path.
    pub granted: Access,
    pub reason: Reason,
}

impl Decision {
    /// How the operation is refused, if it is: `EROFS` where the caller may read but not write
    /// (what a read-only mount of the subtree would say), `EACCES` otherwise.
    pub fn refusal(&self) -> Option<RefusedAs> {
        if self.allowed {
            None
        } else if self.granted == Access::Read {
            Some(RefusedAs::ReadOnly)
        } else {
            Some(RefusedAs::Denied)
        }
    }
}

/// How a refused operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedAs {
    /// `EROFS`.
    ReadOnly,
    /// `EACCES`.
    Denied,
}

#[derive(Debug, Clone)]
struct CallerRule {
    name: Arc<str>,
    line: usize,
    access: Access,
    /// Empty: every path.
    paths: Vec<PathMatch>,
}

impl CallerRule {
    fn matches(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path))
    }
}

/// The policy as it applies to one caller.
#[derive(Debug, Clone)]
pub struct CallerPolicy {
    rules: Vec<CallerRule>,
    default: Access,
    pod: bool,
    squash: Option<Squash>,
    /// Literal directories at or under which a rule lets this caller read or write, with the
    /// rule: the directories above them stay reachable.
    reachable: Vec<(String, usize)>,
    /// The leading components of such rules' globs (`/data/*` of `/data/*/train`), with the
    /// rule: directories they match are above a grant too.
    reachable_globs: Vec<(globset::GlobMatcher, usize)>,
}

impl CallerPolicy {
    pub(super) fn compile(policy: &AccessPolicy, workload: Option<&Workload<'_>>) -> CallerPolicy {
        let Some(w) = workload else {
            return CallerPolicy {
                rules: Vec::new(),
                default: policy.no_pod_default,
                pod: false,
                squash: None,
                reachable: Vec::new(),
                reachable_globs: Vec::new(),
            };
        };
        let selecting = || policy.rules.iter().filter(|r| r.selects(w));
        let squash = selecting().find_map(|r| r.squash);
        let mut rules = Vec::new();
        let mut reachable = Vec::new();
        let mut reachable_globs = Vec::new();
        for rule in selecting() {
            let Some(access) = rule.access else { continue };
            let mut paths = Vec::with_capacity(rule.paths.len());
            let mut usable = true;
            for template in &rule.paths {
                let uses = |p: &str| template.contains(&format!("{{{p}}}"));
                // A placeholder the caller has no name for (a pod without a service account):
                // the rule cannot mean this caller.
                if (uses("namespace") && w.namespace.is_empty())
                    || (uses("service_account") && w.service_account.is_empty())
                    || (uses("pod") && w.pod.is_empty())
                {
                    usable = false;
                    break;
                }
                if is_glob(template) {
                    let esc = globset::escape;
                    let text = substitute(
                        template,
                        &esc(w.namespace),
                        &esc(w.service_account),
                        &esc(w.pod),
                    );
                    let matcher = globset::GlobBuilder::new(&text)
                        .literal_separator(true)
                        .build()
                        .map(|g| g.compile_matcher());
                    // Checked at parse time with stand-in names; escaped names cannot break it.
                    let Ok(matcher) = matcher else {
                        usable = false;
                        break;
                    };
                    let dir = literal_dir(&text).to_string();
                    if access > Access::None {
                        reachable.push((dir.clone(), rules.len()));
                        reachable_globs
                            .extend(leading_globs(&text).into_iter().map(|g| (g, rules.len())));
                    }
                    paths.push(PathMatch::Glob(matcher, dir));
                } else {
                    let dir = substitute(template, w.namespace, w.service_account, w.pod);
                    if access > Access::None {
                        reachable.push((dir.clone(), rules.len()));
                    }
                    paths.push(PathMatch::Prefix(dir));
                }
            }
            if usable {
                rules.push(CallerRule {
                    name: Arc::from(rule.name.as_str()),
                    line: rule.line,
                    access,
                    paths,
                });
            } else {
                reachable.retain(|(_, i)| *i != rules.len());
                reachable_globs.retain(|(_, i)| *i != rules.len());
            }
        }
        CallerPolicy {
            rules,
            default: policy.pods_default,
            pod: true,
            squash,
            reachable,
            reachable_globs,
        }
    }

    /// Whether every path is writable and no identity is mapped: nothing to check.
    pub fn is_unrestricted(&self) -> bool {
        self.squash.is_none()
            && self.default == Access::Write
            && self.rules.iter().all(|r| r.access == Access::Write)
    }

    /// Whether `need` on `path` is allowed, and why.
    pub fn decide(&self, path: &str, need: Need) -> Decision {
        let need = need.as_access();
        if let Some(rule) = self.rules.iter().find(|r| r.matches(path)) {
            return Decision {
                allowed: rule.access >= need,
                granted: rule.access,
                reason: Reason::Rule {
                    name: rule.name.clone(),
                    line: rule.line,
                },
            };
        }
        if self.default >= need {
            return Decision {
                allowed: true,
                granted: self.default,
                reason: Reason::Default { pod: self.pod },
            };
        }
        if need == Access::Read {
            let above = self
                .reachable
                .iter()
                .find(|(dir, _)| is_under(dir, path))
                .map(|(_, i)| *i)
                .or_else(|| {
                    self.reachable_globs
                        .iter()
                        .find(|(glob, _)| glob.is_match(path))
                        .map(|(_, i)| *i)
                });
            if let Some(rule) = above.and_then(|i| self.rules.get(i)) {
                return Decision {
                    allowed: true,
                    granted: Access::Read,
                    reason: Reason::Above {
                        name: rule.name.clone(),
                        line: rule.line,
                    },
                };
            }
        }
        Decision {
            allowed: false,
            granted: self.default,
            reason: Reason::Default { pod: self.pod },
        }
    }

    /// The identity the caller acts as: itself, or squashed by the first rule that maps it.
    pub fn map_identity(&self, caller: &Caller) -> Option<Caller> {
        let mut mapped = caller.clone();
        match self.squash? {
            Squash::Root { uid, gid } => {
                if caller.uid != 0 && caller.gid != 0 && !caller.groups.contains(&0) {
                    return None;
                }
                if mapped.uid == 0 {
                    mapped.uid = uid;
                }
                if mapped.gid == 0 {
                    mapped.gid = gid;
                }
                mapped.groups.retain(|&g| g != 0);
            }
            Squash::All { uid, gid } => {
                mapped.uid = uid;
                mapped.gid = gid;
                mapped.groups.clear();
            }
        }
        Some(mapped)
    }
}

/// Globs of the leading components of `glob` that hold glob characters, shortest first, so
/// that the directories on the way to what it matches can be told: `/data/*` and
/// `/data/*/train` for `/data/*/train/*.bin`.
fn leading_globs(glob: &str) -> Vec<globset::GlobMatcher> {
    let parts: Vec<&str> = glob.split('/').collect();
    (2..parts.len())
        .map(|k| parts[..k].join("/"))
        .filter(|prefix| prefix.contains(['*', '?', '[', '{']))
        .filter_map(|prefix| {
            globset::GlobBuilder::new(&prefix)
                .literal_separator(true)
                .build()
                .ok()
                .map(|g| g.compile_matcher())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[defaults]
pods = "none"
no_pod = "write"

[[rules]]
name = "own checkpoints"
namespace = "ml"
service_account = "trainer"
paths = ["/checkpoints/{pod}"]
access = "write"

[[rules]]
name = "eval reads checkpoints"
service_account = "eval"
paths = ["/checkpoints"]
access = "read"

[[rules]]
name = "no secrets"
paths = ["/datasets/secret"]
access = "none"

[[rules]]
name = "datasets"
paths = ["/datasets", "/shared/*.csv"]
access = "read"

[[rules]]
name = "squash root"
squash = "root"
uid = 1000
gid = 1000
"#;

    fn trainer() -> CallerPolicy {
        let policy = AccessPolicy::parse(POLICY).expect("valid policy");
        policy.for_caller(Some(&Workload {
            namespace: "ml",
            service_account: "trainer",
            pod: "job-a",
        }))
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = trainer();
        assert!(p.decide("/checkpoints/job-a/step-1", Need::Write).allowed);
        let other = p.decide("/checkpoints/job-b/step-1", Need::Read);
        assert!(!other.allowed);
        assert_eq!(other.refusal(), Some(RefusedAs::Denied));
        let data = p.decide("/datasets/train/0.bin", Need::Write);
        assert_eq!(data.refusal(), Some(RefusedAs::ReadOnly));
        assert!(p.decide("/datasets/train/0.bin", Need::Read).allowed);
        let secret = p.decide("/datasets/secret/key", Need::Read);
        assert!(!secret.allowed);
        assert!(matches!(secret.reason, Reason::Rule { ref name, .. } if &**name == "no secrets"));
        // A glob's `*` stays within one component.
        assert!(p.decide("/shared/a.csv", Need::Read).allowed);
        assert!(!p.decide("/shared/sub/a.csv", Need::Read).allowed);
        assert!(!p.decide("/elsewhere", Need::Read).allowed);
    }

    #[test]
    fn directories_above_a_grant_can_be_reached_not_changed() {
        let p = trainer();
        for dir in ["/", "/checkpoints", "/shared"] {
            let d = p.decide(dir, Need::Read);
            assert!(d.allowed, "{dir}: {d:?}");
            assert!(matches!(d.reason, Reason::Above { .. }), "{dir}");
            assert!(!p.decide(dir, Need::Write).allowed, "{dir}");
        }
        assert!(!p.decide("/check", Need::Read).allowed);
        // Through a glob's wildcard components too: `/runs/*/logs` is reached by `/runs/x`.
        let globbed = AccessPolicy::parse(
            "[defaults]\npods = \"none\"\n[[rules]]\npaths = [\"/runs/*/logs/**\"]\naccess = \"read\"\n",
        )
        .expect("valid policy")
        .for_caller(Some(&Workload {
            namespace: "a",
            service_account: "b",
            pod: "c",
        }));
        for dir in ["/", "/runs", "/runs/x", "/runs/x/logs"] {
            assert!(globbed.decide(dir, Need::Read).allowed, "{dir}");
        }
        assert!(globbed.decide("/runs/x/logs/today", Need::Read).allowed);
        assert!(!globbed.decide("/runs/x/other", Need::Read).allowed);
        assert!(!globbed.decide("/elsewhere", Need::Read).allowed);
    }

    #[test]
    fn callers_without_a_pod_get_their_own_default() {
        let policy = AccessPolicy::parse(POLICY).expect("valid policy");
        let plain = policy.for_caller(None);
        assert!(plain.is_unrestricted());
        assert!(plain.decide("/datasets/x", Need::Write).allowed);
        assert_eq!(plain.map_identity(&Caller::root()), None);
    }

    #[test]
    fn squash_maps_root_only_or_everyone() {
        let p = trainer();
        let root = p.map_identity(&Caller::root()).expect("root is squashed");
        assert_eq!((root.uid, root.gid), (1000, 1000));
        assert_eq!(p.map_identity(&Caller::new(5, 6)), None);
        let all = AccessPolicy::parse("[[rules]]\nsquash = \"all\"\nuid = 7\n")
            .expect("valid policy")
            .for_caller(Some(&Workload {
                namespace: "a",
                service_account: "b",
                pod: "c",
            }));
        let mut caller = Caller::new(5, 6);
        caller.groups = vec![10, 11];
        let mapped = all.map_identity(&caller).expect("all are squashed");
        assert_eq!(
            (mapped.uid, mapped.gid, mapped.groups.len()),
            (7, 65_534, 0)
        );
    }
}
