//! Reading a policy's TOML and refusing what cannot work, with the line it is on.

use serde::Deserialize;
use toml::Spanned;

use super::{Access, AccessPolicy, NameGlob, Rule, Squash};

/// The uid and gid squashed callers get unless the rule names them: `nobody`.
const NOBODY: u32 = 65_534;
/// The placeholders a path may hold, each replaced by the caller's own name.
pub(super) const PLACEHOLDERS: [&str; 3] = ["namespace", "service_account", "pod"];

/// Why a policy was refused: the line (1-based; 0 when it is about the whole text) and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}: {reason}")]
pub struct PolicyError {
    pub line: usize,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    defaults: DefaultsSpec,
    #[serde(default)]
    rules: Vec<Spanned<RuleSpec>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DefaultsSpec {
    pods: Option<Access>,
    no_pod: Option<Access>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SquashKind {
    Root,
    All,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<String>,
    namespace: Option<String>,
    service_account: Option<String>,
    pod: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
    access: Option<Access>,
    squash: Option<SquashKind>,
    uid: Option<u32>,
    gid: Option<u32>,
}

pub(super) fn parse(source: &str) -> Result<AccessPolicy, PolicyError> {
    let spec: PolicySpec = toml::from_str(source).map_err(|e| PolicyError {
        line: e.span().map_or(0, |s| line_of(source, s.start)),
        reason: e.message().trim().to_string(),
    })?;
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, spanned) in spec.rules.iter().enumerate() {
        let line = line_of(source, spanned.span().start);
        let rule = check_rule(spanned.get_ref(), i + 1, line)
            .map_err(|reason| PolicyError { line, reason })?;
        if let Some(reason) = never_matches(&rule, &rules) {
            return Err(PolicyError { line, reason });
        }
        rules.push(rule);
    }
    Ok(AccessPolicy {
        source: source.to_string(),
        pods_default: spec.defaults.pods.unwrap_or(Access::Write),
        no_pod_default: spec.defaults.no_pod.unwrap_or(Access::Write),
        rules,
    })
}

/// The 1-based line of byte `offset`.
fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn check_rule(spec: &RuleSpec, number: usize, line: usize) -> Result<Rule, String> {
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| format!("rule {number}"));
    let squash = match spec.squash {
        Some(SquashKind::Root) => Some(Squash::Root {
            uid: spec.uid.unwrap_or(NOBODY),
            gid: spec.gid.unwrap_or(NOBODY),
        }),
        Some(SquashKind::All) => Some(Squash::All {
            uid: spec.uid.unwrap_or(NOBODY),
            gid: spec.gid.unwrap_or(NOBODY),
        }),
        None if spec.uid.is_some() || spec.gid.is_some() => {
            return Err(format!(
                "{name:?} sets uid or gid without squash: add squash = \"root\" or \"all\""
            ));
        }
        None => None,
    };
    if spec.access.is_none() && !spec.paths.is_empty() {
        return Err(format!(
            "{name:?} lists paths without access: add access = \"read\", \"write\" or \"none\""
        ));
    }
    if spec.access.is_none() && squash.is_none() {
        return Err(format!(
            "{name:?} does nothing: give it access (with paths) or squash"
        ));
    }
    for path in &spec.paths {
        check_path(path).map_err(|why| format!("{name:?}: path {path:?} {why}"))?;
    }
    Ok(Rule {
        namespace: name_glob(&name, "namespace", spec.namespace.as_deref())?,
        service_account: name_glob(&name, "service_account", spec.service_account.as_deref())?,
        pod: name_glob(&name, "pod", spec.pod.as_deref())?,
        name,
        line,
        paths: spec.paths.clone(),
        access: spec.access,
        squash,
    })
}

/// A selector glob, refused if no Kubernetes name (lowercase letters, digits, `-`, `.`) can
/// match it.
fn name_glob(rule: &str, field: &str, text: Option<&str>) -> Result<NameGlob, String> {
    let Some(text) = text else {
        return Ok(NameGlob {
            text: None,
            matcher: None,
        });
    };
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*?[]!^".contains(*c)))
    {
        return Err(format!(
            "{rule:?} can never match: {field} {text:?} has {bad:?}, and Kubernetes names are \
             lowercase letters, digits, '-' and '.'"
        ));
    }
    let matcher = globset::Glob::new(text)
        .map_err(|e| format!("{rule:?}: {field} {text:?} is not a glob: {}", e.kind()))?
        .compile_matcher();
    Ok(NameGlob {
        text: Some(text.to_string()),
        matcher: Some(matcher),
    })
}

/// An absolute, normalised path or glob whose placeholders are known.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("is not absolute".into());
    }
    if path != "/" {
        for part in path[1..].split('/') {
            match part {
                "" => return Err("has an empty component or a trailing '/'".into()),
                "." | ".." => return Err(format!("has a {part:?} component")),
                _ => {}
            }
        }
    }
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err("has an unclosed '{'".into());
        };
        let inner = &rest[open + 1..open + close];
        if !inner.contains(',') && !PLACEHOLDERS.contains(&inner) {
            return Err(format!(
                "has an unknown placeholder {{{inner}}}: expected {{namespace}}, \
                 {{service_account}} or {{pod}}"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if is_glob(path) {
        let probe = substitute(path, "x", "x", "x");
        globset::Glob::new(&probe).map_err(|e| format!("is not a glob: {}", e.kind()))?;
    }
    Ok(())
}

/// Whether a path template is a glob rather than a prefix.
pub(super) fn is_glob(path: &str) -> bool {
    let without = substitute(path, "", "", "");
    without.contains(['*', '?', '[', '{'])
}

/// Replace the placeholders of a path template.
pub(super) fn substitute(path: &str, namespace: &str, sa: &str, pod: &str) -> String {
    path.replace("{namespace}", namespace)
        .replace("{service_account}", sa)
        .replace("{pod}", pod)
}

/// The longest literal directory a path template starts with: everything it can match is at
/// or below it.
pub(super) fn literal_dir(path: &str) -> &str {
    match path.find(['*', '?', '[', '{']) {
        None => path,
        Some(at) => match path[..at].rfind('/') {
            Some(0) | None => "/",
            Some(slash) => &path[..slash],
        },
    }
}

/// Whether `path` is `dir` or below it.
pub(super) fn is_under(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// Why `rule` can never decide anything, given the rules before it; `None` if it can.
fn never_matches(rule: &Rule, earlier: &[Rule]) -> Option<String> {
    let access_shadow = rule.access.and_then(|_| {
        earlier.iter().find(|e| {
            e.access.is_some()
                && e.selects_all_of(rule)
                && (e.paths.is_empty()
                    || (!rule.paths.is_empty()
                        && rule
                            .paths
                            .iter()
                            .all(|p| e.paths.iter().any(|q| covers(q, p)))))
        })
    });
    let squash_shadow = rule.squash.and_then(|_| {
        earlier
            .iter()
            .find(|e| e.squash.is_some() && e.selects_all_of(rule))
    });
    let dead_access = rule.access.is_none() || access_shadow.is_some();
    let dead_squash = rule.squash.is_none() || squash_shadow.is_some();
    if !(dead_access && dead_squash) {
        return None;
    }
    let by = access_shadow.or(squash_shadow)?;
    Some(format!(
        "{:?} can never match: {:?} (line {}) comes first and matches every caller and path it \
         does",
        rule.name, by.name, by.line
    ))
}

/// Whether template `earlier` matches every path template `later` can match (conservatively).
fn covers(earlier: &str, later: &str) -> bool {
    if is_glob(earlier) {
        earlier == later
    } else {
        is_under(literal_dir(later), earlier) || earlier == later
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(source: &str) -> PolicyError {
        match parse(source) {
            Ok(_) => panic!("accepted: {source}"),
            Err(e) => e,
        }
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let e = refused("[defaults]\npods = \"none\"\n\n[[rules]]\naccess = \"rw\"\n");
        assert_eq!(e.line, 5, "{e}");
        assert!(e.reason.contains("rw"), "{e}");
        let e = refused("[[rules]]\npaths = [\"/a\"]\nacces = \"read\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("acces"), "{e}");
    }

    #[test]
    fn rules_that_cannot_work_are_refused_with_their_line() {
        let cases = [
            (
                "[[rules]]\nnamespace = \"ML\"\naccess = \"read\"\n",
                "lowercase",
            ),
            (
                "[[rules]]\npaths = [\"data\"]\naccess = \"read\"\n",
                "not absolute",
            ),
            (
                "[[rules]]\npaths = [\"/a/../b\"]\naccess = \"read\"\n",
                "\"..\"",
            ),
            (
                "[[rules]]\npaths = [\"/a/{job}\"]\naccess = \"read\"\n",
                "{job}",
            ),
            ("[[rules]]\npaths = [\"/a\"]\n", "without access"),
            ("[[rules]]\nname = \"x\"\n", "does nothing"),
            ("[[rules]]\nuid = 5\naccess = \"read\"\n", "without squash"),
            (
                "[[rules]]\npaths = [\"/a/[b\"]\naccess = \"read\"\n",
                "not a glob",
            ),
        ];
        for (source, why) in cases {
            let e = refused(source);
            assert_eq!(e.line, 1, "{source}: {e}");
            assert!(e.reason.contains(why), "{source}: {e}");
        }
    }

    #[test]
    fn a_rule_shadowed_by_an_earlier_one_is_refused() {
        let source = "[[rules]]\nname = \"all data\"\npaths = [\"/data\"]\naccess = \"read\"\n\n\
                      [[rules]]\nname = \"csv\"\nnamespace = \"ml\"\npaths = [\"/data/*.csv\"]\n\
                      access = \"write\"\n";
        let e = refused(source);
        assert_eq!(e.line, 6, "{e}");
        assert!(e.reason.contains("\"all data\" (line 1)"), "{e}");
        // The same rules the other way round are fine: the narrower one decides first.
        let swapped = "[[rules]]\nnamespace = \"ml\"\npaths = [\"/data/*.csv\"]\naccess = \"write\"\n\
                       [[rules]]\npaths = [\"/data\"]\naccess = \"read\"\n";
        assert!(parse(swapped).is_ok());
        // A second squash for callers the first already maps.
        let e = refused(
            "[[rules]]\nsquash = \"root\"\n[[rules]]\nnamespace = \"a\"\nsquash = \"all\"\n",
        );
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn literal_dirs_and_prefixes() {
        assert_eq!(literal_dir("/data/*.csv"), "/data");
        assert_eq!(literal_dir("/data*"), "/");
        assert_eq!(literal_dir("/ckpt/{pod}/x"), "/ckpt");
        assert_eq!(literal_dir("/ckpt/a"), "/ckpt/a");
        assert!(is_under("/data/x", "/data"));
        assert!(is_under("/data", "/data"));
        assert!(!is_under("/database", "/data"));
        assert!(is_under("/anything", "/"));
        assert!(!is_glob("/ckpt/{pod}"));
        assert!(is_glob("/ckpt/{a,b}"));
    }
}
