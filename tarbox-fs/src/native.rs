//! Native mounts: host directories shown inside a tenant's tree.
//!
//! A definition names where the directory appears in the tenant's tree (`path`), which host
//! directory serves it (`source`, where `{tenant}` and `{tenant_id}` are replaced by the tenant's
//! name and number) and how (`mode`):
//!
//! ```toml
//! [[native_mounts]]
//! path = "/usr"              # where it appears in the tenant's tree
//! source = "/usr"            # host directory
//! mode = "ro"                # ro: every change is refused with EROFS
//! shared = true              # one definition for all tenants
//!
//! [[native_mounts]]
//! path = "/.venv"
//! source = "/var/tarbox/venvs/{tenant}"
//! mode = "rw"                # changes go to the host directory
//! ```
//!
//! Definitions are stored with the tenant (or, `shared`, once for all tenants) and put in force
//! by the engine when a volume opens (see `engine/native/` for how operations reach the host and
//! why they cannot leave the source directory). This module only parses and checks them: every
//! mistake is refused with a message that names the definition and the field.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::TenantId;

/// How a native mount serves its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeMode {
    /// Read-only: every change is refused with `EROFS`.
    Ro,
    /// Read-write: changes are made in the host directory.
    Rw,
    /// Copy-on-write: reads from the host, changes kept in the tenant's tree. Not served yet:
    /// a definition with it is refused.
    Cow,
}

impl NativeMode {
    /// The mode's name as definitions spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NativeMode::Ro => "ro",
            NativeMode::Rw => "rw",
            NativeMode::Cow => "cow",
        }
    }
}

impl std::str::FromStr for NativeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<NativeMode, String> {
        [NativeMode::Ro, NativeMode::Rw, NativeMode::Cow]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown mode {s:?}: ro, rw or cow"))
    }
}

impl std::fmt::Display for NativeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One native mount as defined (placeholders in `source` not yet replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeMount {
    /// Where it appears in the tenant's tree: an absolute path.
    pub path: String,
    /// The host directory that serves it: an absolute path, `{tenant}` and `{tenant_id}`
    /// replaced.
    pub source: String,
    pub mode: NativeMode,
    /// One definition for every tenant rather than this tenant's own.
    #[serde(default)]
    pub shared: bool,
}

/// Why a definition was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NativeMountError {
    #[error("native mounts are not valid TOML: {0}")]
    Syntax(String),
    #[error("native mount {path:?}: path {why}")]
    Path { path: String, why: &'static str },
    #[error("native mount {path:?}: source {source_path:?} {why}")]
    Source {
        path: String,
        source_path: String,
        why: String,
    },
    #[error("native mount {path:?}: mode \"cow\" is not served yet (use \"ro\" or \"rw\")")]
    CowNotServed { path: String },
    #[error("native mounts {first:?} and {second:?} overlap: one would hide the other")]
    Overlap { first: String, second: String },
    #[error("native mount flag {flag:?}: {why}")]
    Flag { flag: String, why: &'static str },
}

/// The TOML document of a list of definitions.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    native_mounts: Vec<NativeMount>,
}

/// Placeholders a source may contain.
const PLACEHOLDERS: [&str; 2] = ["{tenant}", "{tenant_id}"];

impl NativeMount {
    /// Parse the `--native PATH=SOURCE[:ro|rw|cow]` flag of a mount (`rw` when no mode is
    /// given); the definition is checked.
    pub fn parse_flag(flag: &str) -> Result<NativeMount, NativeMountError> {
        let bad = |why| NativeMountError::Flag {
            flag: flag.to_string(),
            why,
        };
        let (path, rest) = flag
            .split_once('=')
            .ok_or(bad("expected PATH=SOURCE[:MODE]"))?;
        let (source, mode) = match rest.rsplit_once(':') {
            Some((source, mode)) => match mode.parse() {
                Ok(mode) => (source, mode),
                Err(_) => return Err(bad("the mode after the last ':' must be ro, rw or cow")),
            },
            None => (rest, NativeMode::Rw),
        };
        let mount = NativeMount {
            path: path.to_string(),
            source: source.to_string(),
            mode,
            shared: false,
        };
        mount.check()?;
        Ok(mount)
    }

    /// Check one definition on its own: absolute normal paths, a path outside `/.tarbox`,
    /// known placeholders, a mode that is served.
    pub fn check(&self) -> Result<(), NativeMountError> {
        check_tree_path(&self.path)?;
        let without: String = PLACEHOLDERS
            .iter()
            .fold(self.source.clone(), |s, p| s.replace(p, "x"));
        let source_err = |why: String| NativeMountError::Source {
            path: self.path.clone(),
            source_path: self.source.clone(),
            why,
        };
        if let Some(start) = without.find('{') {
            let end = without[start..]
                .find('}')
                .map_or(without.len(), |e| start + e + 1);
            return Err(source_err(format!(
                "has an unknown placeholder {} (known: {{tenant}}, {{tenant_id}})",
                &without[start..end]
            )));
        }
        if without.contains('}') {
            return Err(source_err("has a '}' without its '{'".to_string()));
        }
        if let Err(why) = normal_absolute(&without) {
            return Err(source_err(format!("is not a usable host path: {why}")));
        }
        if self.mode == NativeMode::Cow {
            return Err(NativeMountError::CowNotServed {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The host directory for `tenant`, placeholders replaced.
    pub fn source_for(&self, tenant: &str, tenant_id: TenantId) -> String {
        self.source
            .replace("{tenant_id}", &tenant_id.0.to_string())
            .replace("{tenant}", tenant)
    }

    /// Whether the source names the tenant (and so is the tenant's own directory, which the
    /// engine may create).
    pub fn source_is_per_tenant(&self) -> bool {
        PLACEHOLDERS.iter().any(|p| self.source.contains(p))
    }
}

/// Parse a TOML list of definitions (`[[native_mounts]]` tables) and check it.
pub fn parse(text: &str) -> Result<Vec<NativeMount>, NativeMountError> {
    let doc: Document =
        toml::from_str(text).map_err(|e| NativeMountError::Syntax(e.to_string()))?;
    check_all(&doc.native_mounts)?;
    Ok(doc.native_mounts)
}

/// Definitions as TOML, as [`parse`] reads them.
pub fn to_toml(mounts: &[NativeMount]) -> String {
    let doc = Document {
        native_mounts: mounts.to_vec(),
    };
    // A list of plain tables always serializes.
    toml::to_string(&doc).unwrap_or_default()
}

/// Check each definition, and that no two overlap (the same path, or one inside the other).
pub fn check_all(mounts: &[NativeMount]) -> Result<(), NativeMountError> {
    for (i, m) in mounts.iter().enumerate() {
        m.check()?;
        for other in &mounts[..i] {
            if overlaps(&m.path, &other.path) {
                return Err(NativeMountError::Overlap {
                    first: other.path.clone(),
                    second: m.path.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Whether two tree paths are the same or one lies inside the other.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    a == b || inside(a, b) || inside(b, a)
}

fn check_tree_path(path: &str) -> Result<(), NativeMountError> {
    let err = |why| NativeMountError::Path {
        path: path.to_string(),
        why,
    };
    normal_absolute(path).map_err(err)?;
    if path == "/" {
        return Err(err(
            "is the root of the tree (a native mount shows inside it)",
        ));
    }
    if path == "/.tarbox" || path.starts_with("/.tarbox/") {
        return Err(err("is inside /.tarbox, which the control directory owns"));
    }
    if path.contains(['{', '}']) {
        return Err(err("may not hold placeholders"));
    }
    Ok(())
}

/// Whether `path` is absolute and normal: no empty, `.` or `..` components, no trailing `/`, no
/// NUL, components of at most 255 bytes.
fn normal_absolute(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must be absolute");
    }
    if path.contains('\0') {
        return Err("may not contain NUL");
    }
    if path == "/" {
        return Ok(());
    }
    for part in path[1..].split('/') {
        match part {
            "" => return Err("has an empty component (`//` or a trailing `/`)"),
            "." | ".." => return Err("has a `.` or `..` component"),
            p if p.len() > 255 => return Err("has a component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// The components of a checked tree path.
pub(crate) fn components(path: &str) -> impl Iterator<Item = &[u8]> {
    path[1..].split('/').map(str::as_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(path: &str, source: &str) -> NativeMount {
        NativeMount {
            path: path.into(),
            source: source.into(),
            mode: NativeMode::Rw,
            shared: false,
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let text = r#"
            [[native_mounts]]
            path = "/usr"
            source = "/usr"
            mode = "ro"
            shared = true

            [[native_mounts]]
            path = "/.venv"
            source = "/var/tarbox/venvs/{tenant}"
            mode = "rw"
        "#;
        let mounts = parse(text).expect("valid");
        assert_eq!(mounts.len(), 2);
        assert!(mounts[0].shared && mounts[0].mode == NativeMode::Ro);
        assert_eq!(
            mounts[1].source_for("agent-1", TenantId(7)),
            "/var/tarbox/venvs/agent-1"
        );
        assert_eq!(parse(&to_toml(&mounts)).expect("valid"), mounts);
    }

    #[test]
    fn bad_definitions_name_themselves() {
        let cases = [
            (def("usr", "/usr"), "must be absolute"),
            (def("/usr", "usr"), "must be absolute"),
            (def("/a/../b", "/usr"), "`..`"),
            (def("/usr/", "/usr"), "empty component"),
            (def("/", "/usr"), "root of the tree"),
            (def("/.tarbox/x", "/usr"), "inside /.tarbox"),
            (def("/v", "/srv/{user}"), "unknown placeholder {user}"),
            (def("/v", "/srv/{tenant}/../x"), "`..`"),
        ];
        for (mount, expected) in cases {
            let message = mount.check().expect_err("refused").to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(message.contains(&mount.path), "{message:?} names no path");
        }
        let cow = NativeMount {
            mode: NativeMode::Cow,
            ..def("/src", "/srv/src")
        };
        assert!(matches!(
            cow.check(),
            Err(NativeMountError::CowNotServed { .. })
        ));
        let message = parse("[[native_mounts]]\npath = \"/a\"\nsource = \"/a\"\nmode = \"rx\"\n")
            .expect_err("refused")
            .to_string();
        assert!(message.contains("rx"), "{message}");
    }

    #[test]
    fn overlapping_paths_are_refused() {
        assert!(check_all(&[def("/a", "/x"), def("/ab", "/y")]).is_ok());
        for pair in [("/a", "/a"), ("/a", "/a/b"), ("/a/b", "/a")] {
            let err = check_all(&[def(pair.0, "/x"), def(pair.1, "/y")]).expect_err("refused");
            assert!(matches!(err, NativeMountError::Overlap { .. }), "{pair:?}");
        }
    }

    #[test]
    fn mount_flags_parse() {
        let m = NativeMount::parse_flag("/.venv=/var/venvs/{tenant}:rw").expect("valid");
        assert_eq!((m.path.as_str(), m.mode), ("/.venv", NativeMode::Rw));
        let m = NativeMount::parse_flag("/usr=/usr:ro").expect("valid");
        assert_eq!((m.source.as_str(), m.mode), ("/usr", NativeMode::Ro));
        assert_eq!(
            NativeMount::parse_flag("/data=/srv/data")
                .expect("valid")
                .mode,
            NativeMode::Rw
        );
        assert!(NativeMount::parse_flag("/usr").is_err());
        assert!(NativeMount::parse_flag("/usr=/usr:rx").is_err());
    }
}
